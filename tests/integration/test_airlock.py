"""The airlock over real unix sockets (SQLite and PostgreSQL): identity comes from the socket,
cells and loads are audited as the workspace's claims (never the server's word), loads of
ungranted datasets and floods are refused with one alarm, export requests come from the
workspace's own outbox only, and the cell-audit extension in a real IPython shell fails closed
when the airlock is away."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from spe.accounts.service import accept_terms, get_user
from spe.audit.models import AuditEvent
from spe.db import readonly, transaction
from spe.projects.service import add_member, approve_project, get_project
from spe.workspaces.airlock import MAX_LINE, Airlock
from spe.workspaces.client import AirlockUnavailable, call
from spe.workspaces.layout import host_paths
from spe.workspaces.registry import workspace_started, workspace_stopped
from tests.conftest import synthetic_numbers, write_people_csv, write_policy


class AirlockThread:
    """The airlock service running in a thread with its own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.airlock = Airlock()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.stop_event = asyncio.Event()
            await self.airlock.run(self.stop_event)

        self.loop.run_until_complete(main())

    def start(self) -> AirlockThread:
        self.thread.start()
        return self

    def sync(self) -> None:
        asyncio.run_coroutine_threadsafe(self.airlock.sync(), self.loop).result(10)

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)


@pytest.fixture
def workspaces(world: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Two running workspaces of project 'study' (researcher and researcher2), which is granted
    the dataset 'people', and the airlock."""
    from spe.ingest.pipeline import ingest
    from spe.ingest.policy import load_policy
    from spe.projects.extracts import grant_dataset

    ingest(
        "reviewer",
        write_people_csv(tmp_path / "people.csv", synthetic_numbers(12)),
        load_policy(write_policy(tmp_path)),
    )
    with transaction() as s:
        study = get_project(s, "study")
        # Added at application time: the holder approves the project with its members.
        add_member(s, get_user(s, "researcher"), study, get_user(s, "researcher2"))
        approve_project(s, get_user(s, "reviewer"), study)
        grant_dataset(s, get_user(s, "reviewer"), study, "people", ["income"])
        for name in ("researcher", "researcher2"):
            accept_terms(s, get_user(s, name))
            workspace_started(s, get_user(s, name), study)
    paths = {name: host_paths("study", name) for name in ("researcher", "researcher2")}
    for p in paths.values():
        p.outbox.mkdir(parents=True, exist_ok=True)
    service = AirlockThread().start()
    deadline = time.monotonic() + 10
    while not all(p.airlock_socket.exists() for p in paths.values()):
        assert time.monotonic() < deadline, "the airlock did not open the sockets"
        time.sleep(0.05)
    yield {"paths": paths, "service": service}
    service.stop()


def events(action: str) -> list[AuditEvent]:
    with readonly() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))
        s.expunge_all()  # plain values for the test, after the session ends
        return rows


def test_the_airlock_knows_the_caller_from_its_socket_not_from_what_it_claims(workspaces):
    mine = workspaces["paths"]["researcher"].airlock_socket
    theirs = workspaces["paths"]["researcher2"].airlock_socket
    claim = {"op": "hello", "workspace": "study--researcher2", "user": "researcher2"}
    assert call(claim, mine)["user"] == "researcher"
    assert call({"op": "hello"}, theirs)["user"] == "researcher2"
    assert mine.parent != theirs.parent  # each sandbox mounts only its own folder


def test_each_cell_is_recorded_with_its_hash_for_the_workspace_that_ran_it(workspaces):
    code = "df = sa.load('income')\ndf.describe()\n"
    answer = call(
        {"op": "cell", "code": code, "source": "kernel", "execution_count": 3},
        workspaces["paths"]["researcher2"].airlock_socket,
    )
    digest = hashlib.sha256(code.encode()).hexdigest()
    assert answer["sha256"] == digest
    (event,) = events("workspace.cell")
    details = json.loads(event.details)
    assert event.actor == "researcher2" and event.project == "study"
    assert event.target == "workspace:study--researcher2"
    assert details["code"] == code and details["sha256"] == digest
    with pytest.raises(AirlockUnavailable, match="does not match"):
        call(
            {"op": "cell", "code": "x", "sha256": "0" * 64},
            workspaces["paths"]["researcher"].airlock_socket,
        )


def test_dataset_loads_are_recorded_with_the_dataset(workspaces):
    call(
        {"op": "load", "dataset": "people", "columns": ["income"], "rows": 12},
        workspaces["paths"]["researcher"].airlock_socket,
    )
    (event,) = events("workspace.load")
    assert event.dataset == "people" and event.actor == "researcher"
    assert json.loads(event.details)["source"] == "workspace"


def test_a_cell_claimed_as_the_servers_record_is_stored_as_the_workspaces_claim(workspaces):
    # Kernel code can reach the airlock socket as well as the server hook can: what it says
    # about which layer wrote a record is kept, but only as the workspace's claim.
    call(
        {"op": "cell", "code": "never_ran = 1", "source": "server"},
        workspaces["paths"]["researcher"].airlock_socket,
    )
    (event,) = events("workspace.cell")
    details = json.loads(event.details)
    assert details["source"] == "workspace" and details["layer"] == "server"


def test_the_recorders_socket_stores_its_records_as_its_own_and_only_its_kinds(workspaces):
    """The record socket is the recorder's (outside the sandbox): root-only, beside but apart
    from the airlock folder a sandbox mounts; what comes through it is stored as the recorder's."""
    from spe.hub.recorder import RecordingFailed, airlock_sink

    paths = workspaces["paths"]["researcher"]
    record = paths.record_socket
    assert record.is_socket() and (record.stat().st_mode & 0o777) == 0o600
    assert paths.airlock not in record.parents
    sink = airlock_sink(str(record))
    sink("workspace.cell", {"code": "x = 1", "source": "workspace", "layer": "recorder"})
    (event,) = events("workspace.cell")
    assert json.loads(event.details)["source"] == "recorder"
    assert event.actor == "researcher" and event.target == "workspace:study--researcher"
    with pytest.raises(RecordingFailed, match="only its own kinds"):
        sink("workspace.load", {"dataset": "people"})


def test_a_load_of_a_dataset_the_project_was_not_granted_is_refused_with_an_alarm(workspaces):
    sock = workspaces["paths"]["researcher"].airlock_socket
    with pytest.raises(AirlockUnavailable, match="no grant for the dataset 'income'"):
        call({"op": "load", "dataset": "income", "columns": ["wage"], "rows": 830}, sock)
    assert events("workspace.load") == []
    (alarm,) = events("workspace.load_alarm")
    assert alarm.dataset == "income" and alarm.target == "workspace:study--researcher"


def test_an_airlock_flood_ends_in_refusal_and_one_alarm_without_filling_the_log(
    workspaces, monkeypatch
):
    """40 records of 256 KiB as fast as a kernel can send them, against a 1 MiB daily quota
    (the attack of issue 15); then a burst of small records against the per-second quota."""
    from spe.config import reset_settings

    monkeypatch.setenv("SPE_WORKSPACE_AIRLOCK_BYTES_PER_DAY", str(1 << 20))
    monkeypatch.setenv("SPE_WORKSPACE_AIRLOCK_BURST", "20")
    monkeypatch.setenv("SPE_WORKSPACE_AIRLOCK_EVENTS_PER_SECOND", "0.5")
    reset_settings()
    big = {"op": "cell", "code": "#" + "x" * (256 << 10), "source": "server"}
    paths = workspaces["paths"]
    answers = []
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(str(paths["researcher"].airlock_socket))
        stream = raw.makefile("rwb")
        started = time.monotonic()
        for _ in range(40):
            stream.write(json.dumps(big).encode() + b"\n")
            stream.flush()
            answers.append(json.loads(stream.readline()))
        flood_seconds = time.monotonic() - started
    recorded = [a for a in answers if a["ok"]]
    refused = [a for a in answers if not a["ok"]]
    assert len(recorded) == 3, answers[:5]  # 3 x 256 KiB fit in 1 MiB, the 4th does not
    assert all("MiB to SPE's audit log today" in a["error"] for a in refused)
    assert len(events("workspace.cell")) == 3
    (alarm,) = events("workspace.quota_alarm")
    assert json.loads(alarm.details)["quota"] == "bytes_per_day"
    assert flood_seconds < 10

    # The other workspace has its own quota; small records hit the rate, once alarmed.
    sock = paths["researcher2"].airlock_socket
    outcomes = []
    for i in range(40):
        try:
            call({"op": "cell", "code": f"x = {i}"}, sock)
            outcomes.append(True)
        except AirlockUnavailable as exc:
            assert "requests a second" in str(exc)
            outcomes.append(False)
    assert outcomes[:20] == [True] * 20 and outcomes.count(False) >= 10
    alarms = [json.loads(a.details)["quota"] for a in events("workspace.quota_alarm")]
    assert sorted(alarms) == ["bytes_per_day", "events_per_second"]


def test_an_export_through_the_airlock_takes_files_only_from_the_callers_outbox(workspaces):
    paths = workspaces["paths"]
    (paths["researcher2"].outbox / "theirs.txt").write_text("researcher2's notes\n")
    (paths["researcher"].outbox / "mine.txt").write_text("my notes\n")
    sock = paths["researcher"].airlock_socket
    with pytest.raises(AirlockUnavailable, match="no such file"):
        call({"op": "export", "outputs": [{"name": "theirs.txt", "justification": "x"}]}, sock)
    with pytest.raises(AirlockUnavailable, match="not a plain file name"):
        call(
            {
                "op": "export",
                "outputs": [
                    {"name": "../../researcher2/home/outbox/theirs.txt", "justification": "x"}
                ],
            },
            sock,
        )
    filed = call(
        {"op": "export", "title": "t", "outputs": [{"name": "mine.txt", "justification": "notes"}]},
        sock,
    )
    mine = call({"op": "exports"}, sock)["requests"]
    assert [r["id"] for r in mine] == [filed["request"]]
    assert mine[0]["author"] == "researcher"
    assert call({"op": "exports"}, paths["researcher2"].airlock_socket)["requests"] == []


def test_bad_requests_get_a_sentence_and_the_airlock_stays_up(workspaces):
    sock = workspaces["paths"]["researcher"].airlock_socket
    for request, message in (
        ({"op": "nope"}, "Unknown operation"),
        ({"op": "cell"}, "code as text"),
        ({"op": "load"}, "dataset's name"),
        ({"op": "export", "outputs": "x"}, "needs"),
    ):
        with pytest.raises(AirlockUnavailable, match=message):
            call(request, sock)
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(str(sock))
        raw.sendall(b"x" * (MAX_LINE + 10) + b"\n")
        assert b"at most" in raw.recv(4096)
    assert call({"op": "hello"}, sock)["ok"]


def test_a_stopped_workspace_loses_its_airlock(workspaces):
    sock = workspaces["paths"]["researcher"].airlock_socket
    with transaction() as s:
        workspace_stopped(s, "system:test", "study--researcher", "test")
    workspaces["service"].sync()
    assert not sock.exists()
    with pytest.raises(AirlockUnavailable):
        call({"op": "hello"}, sock)


def test_the_cell_audit_extension_records_cells_and_fails_closed(workspaces, monkeypatch):
    """A real IPython shell in this process with the extension loaded (as in every kernel)."""
    from IPython.core.interactiveshell import InteractiveShell

    from spe.config import reset_settings

    sock: Path = workspaces["paths"]["researcher"].airlock_socket
    monkeypatch.setenv("SPE_WORKSPACE_AIRLOCK_SOCKET", str(sock))
    reset_settings()
    shell = InteractiveShell.instance()
    try:
        shell.extension_manager.load_extension("spe.workspaces.cell_audit")
        assert shell.run_cell("audited_value = 6 * 7").success
        assert shell.user_ns["audited_value"] == 42
        recorded = [json.loads(e.details)["code"] for e in events("workspace.cell")]
        assert recorded == ["audited_value = 6 * 7\n"]

        workspaces["service"].stop()  # the airlock goes away ...
        result = shell.run_cell("unaudited_value = 1")
        assert not result.success  # ... and the cell does not run
        assert "could not record this cell" in str(result.error_in_exec)
        assert "unaudited_value" not in shell.user_ns
        with pytest.raises(RuntimeError, match="cannot be unloaded"):
            shell.extension_manager.unload_extension("spe.workspaces.cell_audit")
    finally:
        InteractiveShell.clear_instance()


def test_loading_data_in_a_workspace_is_recorded_and_refused_when_it_cannot_be(
    workspaces, monkeypatch, tmp_path
):
    import pandas as pd

    import spe.analysis as sa
    from spe.analysis import AnalysisError
    from spe.config import reset_settings

    data = tmp_path / "data" / "people"
    data.mkdir(parents=True)
    pd.DataFrame({"person_id": ["a", "b"], "wage": [1, 2]}).to_parquet(data / "data.parquet")
    monkeypatch.setenv("SPE_WORKSPACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(
        "SPE_WORKSPACE_AIRLOCK_SOCKET", str(workspaces["paths"]["researcher"].airlock_socket)
    )
    reset_settings()
    assert len(sa.load("people")) == 2
    (event,) = events("workspace.load")
    assert event.dataset == "people" and json.loads(event.details)["rows"] == 2
    workspaces["service"].stop()
    with pytest.raises(AnalysisError, match="could not be recorded"):
        sa.load("people")
