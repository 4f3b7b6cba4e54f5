"""Celery tasks end to end: a real `spe worker` subprocess runs the jobs the CLI sends.

Every test runs on both brokers, Celery's SQLAlchemy transport on a SQLite file (the embedded
default) and the Redis named by SPE_TEST_REDIS_URL (a test-private database, flushed before and
after), and through ``spe_env`` on SQLite and PostgreSQL. The worker helpers here are shared
with test_faults.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from tests.conftest import IN_CI, synthetic_numbers, write_people_csv, write_policy


def _private_redis_url() -> str:
    """A Redis database of this test process's own: 7 for a serial run, 7 + n for the n-th
    parallel worker (pytest-xdist's gw0, gw1, ...), so that no worker flushes another's jobs."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    offset = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    base = os.environ.get("SPE_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
    root, _, db = base.rpartition("/")
    return f"{root}/{int(db) + offset}" if db.isdigit() else base


REDIS_URL = _private_redis_url()
WORKER_READY_SECONDS = 60.0
JOB_SECONDS = 120.0
_STATUS = re.compile(
    r"^job (?P<id>\S+) \((?P<kind>\w+)\): (?P<status>\w+)(?:, (?P<done>[\d,]+)/(?P<total>[\d,]+))?"
)


# --- helpers shared with test_faults.py --------------------------------------------------------


class WorkerProcess:
    """One `spe worker` subprocess in a session of its own, so a kill takes its whole group."""

    def __init__(self, env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spe.cli", "worker"],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = WORKER_READY_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log.read_bytes():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"the worker was not ready after {timeout:.0f} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the process group: no clean-up and no acknowledgement, as in a crash."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Workers:
    """Starts workers against the test's SPE; the fixture kills every one of them at the end."""

    def __init__(self, spe_env: dict[str, str], folder: Path) -> None:
        self.spe_env = spe_env
        self.folder = folder
        self.started: list[WorkerProcess] = []

    def start(self, broker_url: str, **settings: Any) -> WorkerProcess:
        """A ready worker; ``settings`` are SPE settings by field name, e.g.
        ``job_stale_after_seconds=5``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
        env.update(self.spe_env)
        env["SPE_BROKER_URL"] = broker_url
        env.update({f"SPE_{name.upper()}": str(value) for name, value in settings.items()})
        log = self.folder / f"worker-{len(self.started) + 1}.log"
        # Another working directory than the tests': the job's files are named by absolute paths.
        worker = WorkerProcess(env, log, self.folder)
        self.started.append(worker)
        worker.wait_ready()
        return worker

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill()
            print(f"--- {worker.log.name} (last lines)\n{worker.tail()}")


def embedded_broker_url(spe_env: dict[str, str]) -> str:
    """The embedded default spelled out: the SQLAlchemy transport on a file in the state dir."""
    return f"sqla+sqlite:///{(Path(spe_env['SPE_STATE_DIR']) / 'celery-broker.sqlite').as_posix()}"


def wait_for_job(job_id: str, timeout: float = JOB_SECONDS) -> Any:
    from spe.jobs.service import wait

    view = wait(job_id, timeout=timeout)
    assert view.status in ("done", "failed"), f"job {job_id} still {view.status} after {timeout} s"
    return view


def only_job() -> str:
    from spe.db import transaction
    from spe.jobs.models import Job

    with transaction() as s:
        (job_id,) = s.scalars(select(Job.id)).all()
        return str(job_id)


def dataset_versions(name: str) -> list[Any]:
    from spe.catalogue.models import Dataset, DatasetVersion
    from spe.db import transaction

    with transaction() as s:
        rows = s.scalars(select(DatasetVersion).join(Dataset).where(Dataset.name == name)).all()
        s.expunge_all()
        return list(rows)


def audit_events(action: str, dataset: str | None = None) -> list[Any]:
    from spe.audit.models import AuditEvent
    from spe.db import transaction

    query = select(AuditEvent).where(AuditEvent.action == action)
    if dataset is not None:
        query = query.where(AuditEvent.dataset == dataset)
    with transaction() as s:
        rows = s.scalars(query).all()
        s.expunge_all()
        return list(rows)


def parse_status(text: str) -> dict[str, Any]:
    """`spe task status` output → status, done, total, error, result."""
    match = _STATUS.match(text)
    assert match, f"unexpected `spe task status` output: {text!r}"
    out: dict[str, Any] = {
        "status": match["status"],
        "done": int(match["done"].replace(",", "")) if match["done"] else None,
        "total": int(match["total"].replace(",", "")) if match["total"] else None,
        "error": None,
        "result": None,
    }
    for line in text.splitlines()[1:]:
        if line.startswith("  error: "):
            out["error"] = line.removeprefix("  error: ")
        elif line.startswith("  result: "):
            out["result"] = json.loads(line.removeprefix("  result: "))
    return out


def redis_client(url: str) -> Any:
    """A client for the Redis at ``url``, or skip (fail under CI) when it does not answer."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = f"Redis at {url} is not reachable ({exc.__class__.__name__})"
        if IN_CI:
            pytest.fail(reason + "; CI must run the Redis broker tests")
        pytest.skip(reason)
    return client


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def workers(spe_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(spe_env, tmp_path)
    yield pool
    pool.kill_all()


@pytest.fixture(params=["sqlalchemy", "redis"])
def broker_url(request: pytest.FixtureRequest, spe_env: dict[str, str]) -> Iterator[str]:
    if request.param == "sqlalchemy":
        yield embedded_broker_url(spe_env)
        return
    client = redis_client(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def worker(workers: Workers, broker_url: str) -> WorkerProcess:
    return workers.start(broker_url)


@pytest.fixture
def spe_cli(run_spe: Any, broker_url: str) -> Callable[..., Any]:
    """`spe ...` in a subprocess that sends its jobs to the test's broker."""

    def run(*args: str) -> Any:
        return run_spe(*args, env={"SPE_BROKER_URL": broker_url})

    return run


@pytest.fixture(scope="module")
def large_people_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 M rows of 1,000 people (policy people with one_row_per_person false): an ingest that
    takes several seconds, long enough to watch its progress."""
    numbers = synthetic_numbers(1000)
    block = "".join(
        f"{number},Åse Ødegård {i},1970-05-17,{['0301', '4601', '5001'][i % 3]},{1000 * i}\n"
        for i, number in enumerate(numbers)
    )
    path = tmp_path_factory.mktemp("large") / "people_large.csv"
    path.write_bytes(("fnr,name,birth_date,municipality,income\n" + block * 4000).encode())
    return path


# --- tests -------------------------------------------------------------------------------------


def test_ingest_sent_by_the_cli_is_run_by_the_worker_and_status_shows_the_counts(
    world, worker, spe_cli, tmp_path
):
    from spe.ingest.store import read_version_at

    csv_path = write_people_csv(tmp_path / "people.csv", [*synthetic_numbers(60), "12345"])
    policy = write_policy(tmp_path)

    # Without --inline the CLI only submits the job and waits for a worker to run it.
    done = spe_cli("--as", "reviewer", "dataset", "ingest", str(csv_path), "--policy", str(policy))
    assert done.returncode == 0, done.stderr
    assert "Ingested people version 1: 60 rows accepted, 1 rejected." in done.stdout
    assert "rejected 1: not_11_digits" in done.stdout

    job_id = only_job()
    shown = spe_cli("task", "status", job_id)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"job {job_id} (ingest): done, 61/61 (100 %)")
    status = parse_status(shown.stdout)
    assert status["error"] is None
    result = status["result"]
    assert result["created"] is True and result["version"] == 1
    assert result["accepted"] == 60 and result["rejected"] == {"not_11_digits": 1}

    (version,) = dataset_versions("people")
    assert read_version_at(version.path).num_rows == 60
    assert len(audit_events("dataset.ingest", "people")) == 1


def test_extraction_job_sent_by_a_grant_is_run_by_the_worker_and_status_shows_the_rows(
    people, worker, spe_cli
):
    from spe.accounts.service import get_user
    from spe.db import transaction
    from spe.projects.models import ProjectExtract
    from spe.projects.service import approve_project, get_project
    from spe.storage import data_storage

    with transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
    granted = spe_cli(
        "--as",
        "reviewer",
        "project",
        "grant",
        "study",
        "people",
        "--variables",
        "income,municipality",
        "--generalise",
        "municipality=county",
    )
    assert granted.returncode == 0, granted.stderr
    match = re.search(r"Extraction job (\S+) queued\.", granted.stdout)
    assert match, granted.stdout
    job_id = match[1]

    view = wait_for_job(job_id)
    assert view.status == "done", view.error
    status = parse_status(spe_cli("task", "status", job_id).stdout)
    assert (status["status"], status["done"], status["total"]) == ("done", 60, 60)
    assert status["result"]["rows"] == 60 and status["result"]["created"] is True

    with transaction() as s:
        (extract,) = s.scalars(select(ProjectExtract)).all()
        path = data_storage().path(extract.path)
    table = pq.read_table(path)
    assert table.column_names == ["person_id", "income", "municipality"]
    assert set(table.column("municipality").to_pylist()) == {"03", "46", "50"}
    assert len(audit_events("project.extract")) == 1


def test_job_delivered_twice_to_two_workers_runs_once(
    world, workers, broker_url, monkeypatch, tmp_path
):
    from spe.config import reset_settings
    from spe.db import transaction
    from spe.jobs import service as jobs
    from spe.tasks import dispatch

    workers.start(broker_url)
    workers.start(broker_url)
    csv_path = write_people_csv(tmp_path / "people.csv", synthetic_numbers(60))
    params = {
        "actor": "reviewer",
        "source": str(csv_path.resolve()),
        "policy": str(write_policy(tmp_path).resolve()),
        "history": None,
    }
    with transaction() as s:
        job_id = str(jobs.submit(s, "reviewer", "ingest", params).id)
    monkeypatch.setenv("SPE_BROKER_URL", broker_url)
    reset_settings()
    dispatch(job_id)
    dispatch(job_id)  # the same job again, as after a redelivery

    view = wait_for_job(job_id)
    assert view.status == "done", view.error
    assert view.attempts == 1  # claimed once: the other delivery found it taken or finished
    assert view.result["created"] is True
    assert len(dataset_versions("people")) == 1
    assert len(audit_events("dataset.ingest", "people")) == 1


def test_failing_job_ends_failed_with_its_one_sentence_reason_in_task_status(
    world, worker, spe_cli, tmp_path
):
    from spe.catalogue.models import Dataset
    from spe.db import transaction

    csv_path = tmp_path / "people.csv"
    rows = ["fnr,name,birth_date,municipality,income,shoe_size"]
    rows += [f"{n},Kari {i},1970-05-17,0301,{i},42" for i, n in enumerate(synthetic_numbers(5))]
    csv_path.write_text("\n".join(rows) + "\n")
    policy = write_policy(tmp_path)

    sent = spe_cli(
        "--as",
        "reviewer",
        "dataset",
        "ingest",
        str(csv_path),
        "--policy",
        str(policy),
        "--no-wait",
    )
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.strip()
    assert wait_for_job(job_id).status == "failed"

    shown = spe_cli("task", "status", job_id)
    assert shown.returncode == 0, shown.stderr
    status = parse_status(shown.stdout)
    assert status["status"] == "failed"
    error = status["error"]
    assert error.startswith("people.csv has the column 'shoe_size', which the policy people.yaml")
    assert error.endswith("or remove it from the extract.")
    assert "\n" not in error and "Traceback" not in shown.stdout + shown.stderr
    # Nothing half-visible.
    with transaction() as s:
        assert s.scalars(select(Dataset)).all() == []
    assert audit_events("dataset.ingest") == []


@pytest.mark.slow
def test_progress_of_a_large_ingest_is_visible_in_task_status_while_it_runs(
    world, worker, spe_cli, tmp_path, large_people_csv
):
    policy = write_policy(tmp_path, one_row=False)
    sent = spe_cli(
        "--as",
        "reviewer",
        "dataset",
        "ingest",
        str(large_people_csv),
        "--policy",
        str(policy),
        "--no-wait",
    )
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.strip()

    from spe.jobs.service import get
    from spe.tasks import describe

    # Polled in this process: what `spe task status` prints (describe(get(id))), without the
    # command's ~1 s start-up, which is about as long as the whole ingest now takes.
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + JOB_SECONDS
    while time.monotonic() < deadline:
        seen.append(parse_status(describe(get(job_id))))
        if seen[-1]["status"] in ("done", "failed"):
            break
        time.sleep(0.02)
    shown = spe_cli("task", "status", job_id)
    assert shown.returncode == 0, shown.stderr
    seen.append(parse_status(shown.stdout))
    part_way = [
        s for s in seen if s["status"] == "running" and s["total"] and 0 < s["done"] < s["total"]
    ]
    assert part_way, f"no progress seen while running: {seen}"
    assert part_way[0]["total"] == 4_000_000
    dones = [s["done"] for s in seen if s["done"] is not None]
    assert dones == sorted(dones)  # progress never goes back
    last = seen[-1]
    assert (last["status"], last["done"], last["total"]) == ("done", 4_000_000, 4_000_000)
    assert last["result"]["accepted"] == 4_000_000


def test_export_check_sent_by_the_cli_is_run_by_the_worker(world, worker, spe_cli, tmp_path):
    from spe.accounts.service import accept_terms, get_user
    from spe.db import readonly, transaction
    from spe.exports.actions import get_request
    from spe.projects.service import approve_project, get_project

    with transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
        accept_terms(s, get_user(s, "researcher"))
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "notes.txt").write_text("Income rises with education.\n")
    done = spe_cli(
        "--as", "researcher", "export", "file", "--project", "study",
        "--output", "notes.txt", "--justification", "for the paper", "--outbox", str(outbox),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "check queued" in done.stdout
    view = wait_for_job(only_job())
    assert view.status == "done", view.error
    with readonly() as s:
        assert get_request(s, view.result["request"]).status.value == "in_review"
