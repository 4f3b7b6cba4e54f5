"""Audit log benchmarks: write overhead of ``spe.audit.record()`` and ``spe audit verify``.

Every figure is one JSON line on stdout (``{"name", "value", "unit", ...}``); progress goes to
stderr. Each part runs on SQLite and on PostgreSQL, on throw-away state made here: a temporary
SPE_STATE_DIR (the SQLite database, keys, checkpoint file) and, for PostgreSQL, a fresh schema
in the ``test`` database, dropped at the end.

(a) One event per transaction: a bare Core insert of the same row (precomputed, canonical
    details included) against ``record()`` in the same kind of Core transaction
    (``engine.begin()``: an event that changes nothing else, such as a login or a read), with 1
    and 8 concurrent writers; ``record()`` inside ``spe.db.transaction()`` (an ORM session, the
    path of state changes) is reported beside it as ``record_session``. The sealer runs as in
    production: a background thread running ``run_sealer``'s loop; its own figures ride along
    as ``sealer_*`` keys. ``--sealer off`` measures without sealing.
(b) The same with 1,000 events per transaction (one executemany against 1,000 record() calls
    in an ORM session, which queues them into one multi-row insert).
(c) ``verify_log`` over N events (default 1,000,000): bulk-inserted, sealed with ``seal_all``
    (timed on its own), verified; with the floor of merely reading the same rows with the raw
    driver, and a CPU breakdown of the verifier's per-event work.

Writers are threads by default; with 8 writers each backend is also measured with processes
(``"concurrency": "processes"``), because threads share one GIL on this 2-core machine. Both
sides of a ratio always use the same kind of writer, the same engine settings and the same
sealer. Bare and record() phases alternate (and swap order every round) so that the growth of
the table affects both alike.

    .venv/bin/python benchmarks/audit.py [--quick] [--events N] [--backend sqlite|postgresql]
        [--part a|b|c] [--seconds S] [--rounds R] [--batch N] [--checkpoints M]
        [--sealer loop|off]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PG_URL = os.environ.get(
    "SPE_BENCH_POSTGRES_URL",
    os.environ.get("SPE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
)
BACKENDS = ("sqlite", "postgresql")
GOAL_SINGLE = 0.8
GOAL_BATCH = 0.5
GOAL_VERIFY = 300_000

# One realistic event: what a researcher's query against a dataset records.
ACTOR = "researcher"
ACTION = "dataset.query"
PROJECT = "study"
DATASET = "income-2020"
DETAILS = {
    "purpose": "descriptive statistics for the approved analysis plan",
    "rows": 12345,
    "columns": ["age", "income", "region"],
    "suppressed": False,
}


def emit(name: str, value: Any, unit: str | None, **extra: Any) -> None:
    print(json.dumps({"name": name, "value": value, "unit": unit, **extra}), flush=True)


def say(message: str) -> None:
    print(f"[audit] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Throw-away SPE state


def _activate(env: dict[str, str]) -> None:
    """Point SPE (this process) at ``env``, dropping every cached setting, engine and key."""
    for key in list(os.environ):
        if key.startswith("SPE_") and not key.startswith(("SPE_TEST_", "SPE_BENCH_")):
            del os.environ[key]
    os.environ.update(env)
    from spe.config import reset_settings
    from spe.db.session import reset_engine
    from spe.keys.signing import forget_cached_keys

    reset_engine()
    reset_settings()
    forget_cached_keys()


def postgres_unreachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure means: not usable here
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""]
        return f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__}: {detail[0]})"
    return None


@contextlib.contextmanager
def spe_state(backend: str, tmp_root: Path) -> Iterator[dict[str, str]]:
    """A migrated, empty SPE with keys on ``backend``; yields its environment variables."""
    from sqlalchemy import create_engine, text

    state = tmp_root / f"{backend}-{uuid.uuid4().hex[:8]}"
    state.mkdir()
    env = {"SPE_STATE_DIR": str(state)}
    schema = None
    admin = None
    if backend == "postgresql":
        schema = f"spe_bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in PG_URL else "?"
        env["SPE_DATABASE_URL"] = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        _activate(env)
        from spe.db.migrate import upgrade
        from spe.setup import ensure_keys

        upgrade()
        ensure_keys()
        yield env
    finally:
        from spe.db.session import reset_engine

        reset_engine()
        if admin is not None:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()
        shutil.rmtree(state, ignore_errors=True)


def sqlite_path() -> str:
    from sqlalchemy.engine import make_url

    from spe.config import get_settings

    return str(make_url(get_settings().database_url).database)


# ---------------------------------------------------------------------------------------------
# The sealer, as production runs it: seal_once in a loop, once a second


class Sealer:
    """A background thread sealing every ``interval`` seconds, each ``seal_once`` call timed.

    ``loop`` is ``run_sealer``'s loop as in production: ``seal_once`` every ``interval``, again
    at once only while batches come back full (a backlog); ``off`` does not seal.
    """

    def __init__(self, mode: str = "loop", interval: float = 1.0) -> None:
        self.mode = mode
        self.interval = interval
        self.stop_event = threading.Event()
        self.sealed = 0
        self.checkpoints = 0
        self.calls = 0
        self.busy = 0.0
        self.longest = 0.0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sealer", daemon=True)

    def _run(self) -> None:
        from spe.audit.seal import seal_once

        try:
            while not self.stop_event.is_set():
                started = time.monotonic()
                while True:
                    call = time.monotonic()
                    checkpoint = seal_once()
                    took = time.monotonic() - call
                    self.calls += 1
                    self.longest = max(self.longest, took)
                    if checkpoint is None:
                        break
                    sealed = checkpoint.tree_size - self._size_before - self.sealed
                    self.sealed += sealed
                    self.checkpoints += 1
                    if sealed < self.batch_max:
                        break
                self.busy += time.monotonic() - started
                remaining = self.interval - (time.monotonic() - started)
                self.stop_event.wait(max(remaining, 0.01))
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def __enter__(self) -> Sealer:
        from spe.config import get_settings

        self.batch_max = get_settings().seal_batch_max
        self._size_before = tree_size()
        if self.mode != "off":
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        if self.mode != "off":
            self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"the sealer failed: {self.error!r}") from self.error

    def stats(self) -> dict[str, Any]:
        return {
            "sealed": self.sealed,
            "checkpoints": self.checkpoints,
            "seal_once_calls": self.calls,
            "busy_s": round(self.busy, 2),
            "longest_seal_s": round(self.longest, 3),
        }


SEALER_NOTE = {
    "loop": "thread in this process running run_sealer's loop: one seal_once a second, more "
    "only while batches come back full",
    "off": "none: no sealing while writing",
}


def tree_size() -> int:
    from sqlalchemy import func, select

    from spe.audit.models import AuditCheckpoint
    from spe.db.session import get_engine

    with get_engine().connect() as conn:
        return int(conn.scalar(select(func.coalesce(func.max(AuditCheckpoint.tree_size), 0))))


def unsealed() -> int:
    from sqlalchemy import text

    from spe.db.session import get_engine

    with get_engine().connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM audit_events WHERE seq IS NULL")))


# ---------------------------------------------------------------------------------------------
# Writers


def _writer(kind: str, batch: int, writer: int) -> Callable[[], None]:
    """One transaction of ``batch`` events, either bare or through record()."""
    from sqlalchemy import insert

    from spe.audit import record
    from spe.audit.canonical import canonical_details
    from spe.audit.log import now_text
    from spe.audit.models import AuditEvent
    from spe.db import transaction
    from spe.db.session import get_engine

    target = f"dataset:{DATASET}:w{writer}"
    if kind == "bare":
        engine = get_engine()
        stmt = insert(AuditEvent.__table__)
        row = {
            "time": now_text(),
            "actor": ACTOR,
            "action": ACTION,
            "target": target,
            "project": PROJECT,
            "dataset": DATASET,
            "details": canonical_details(DETAILS),
        }
        params: Any = row if batch == 1 else [row] * batch

        def bare() -> None:
            with engine.begin() as conn:
                conn.execute(stmt, params)

        return bare

    def recorded_in_session() -> None:
        with transaction() as session:
            for _ in range(batch):
                record(session, ACTOR, ACTION, target, DETAILS, project=PROJECT, dataset=DATASET)

    if kind == "record_session" or batch > 1:
        # An ORM session queues the events and inserts them in one multi-row statement.
        return recorded_in_session

    engine = get_engine()

    def recorded_on_connection() -> None:
        # An event that changes nothing else (a login, a read) in a Core transaction.
        with engine.begin() as conn:
            record(conn, ACTOR, ACTION, target, DETAILS, project=PROJECT, dataset=DATASET)

    return recorded_on_connection


def _write_loop(kind: str, batch: int, writer: int, seconds: float, barrier: Any) -> list[float]:
    """Warm up, wait for the others, then write for ``seconds``; returns [events, elapsed]."""
    one = _writer(kind, batch, writer)
    for _ in range(3):
        one()
    barrier.wait()
    count = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        one()
        count += batch
    return [count, time.monotonic() - started]


def _process_main(
    env: dict[str, str],
    kind: str,
    batch: int,
    writer: int,
    seconds: float,
    barrier: Any,
    results: Any,
) -> None:
    os.environ.update(env)
    try:
        results.put((writer, _write_loop(kind, batch, writer, seconds, barrier)))
    except BaseException as exc:
        barrier.abort()
        results.put((writer, f"{type(exc).__name__}: {exc}"))


def run_writers(
    env: dict[str, str], kind: str, writers: int, batch: int, seconds: float, concurrency: str
) -> tuple[int, float]:
    """Total events written and the writers' longest elapsed time."""
    out: list[Any] = [None] * writers
    if concurrency == "threads":
        barrier: Any = threading.Barrier(writers)

        def run(i: int) -> None:
            try:
                out[i] = _write_loop(kind, batch, i, seconds, barrier)
            except BaseException as exc:
                barrier.abort()
                out[i] = f"{type(exc).__name__}: {exc}"

        threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(writers)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_process_main, args=(env, kind, batch, i, seconds, barrier, results))
            for i in range(writers)
        ]
        for p in procs:
            p.start()
        for _ in procs:
            i, result = results.get(timeout=seconds + 300)
            out[i] = result
        for p in procs:
            p.join()
    errors = [r for r in out if not isinstance(r, list)]
    if errors:
        raise RuntimeError(f"{kind} writer failed: {errors[0]}")
    return int(sum(r[0] for r in out)), max(r[1] for r in out)


def measure_writes(
    env: dict[str, str],
    backend: str,
    part: str,
    batch: int,
    writers: int,
    concurrency: str,
    seconds: float,
    rounds: int,
    sealer_mode: str,
) -> None:
    """Alternate bare and record() phases (``rounds`` of each, order swapped every round),
    each with the sealer running, and emit events/s for both and their ratio."""
    from spe.audit.seal import seal_all

    load_before = os.getloadavg()[0]
    kinds = ["bare", "record", *(["record_session"] if batch == 1 else [])]
    phases: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for r in range(rounds):
        for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
            with Sealer(sealer_mode) as sealer:
                events, elapsed = run_writers(env, kind, writers, batch, seconds, concurrency)
                backlog = unsealed()
            phases[kind].append(
                {"events": events, "seconds": elapsed, "backlog": backlog, **sealer.stats()}
            )
            seal_all()  # drain, untimed, so every phase starts with nothing pending
            say(
                f"{backend} {part} batch={batch} writers={writers} {concurrency} {kind}: "
                f"{events / elapsed:,.0f} events/s; sealer {sealer.stats()}, "
                f"unsealed at the end {backlog}"
            )
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    rates = {
        kind: sum(p["events"] for p in ph) / sum(p["seconds"] for p in ph)
        for kind, ph in phases.items()
    }
    per_round = [
        round((rec["events"] / rec["seconds"]) / (bare["events"] / bare["seconds"]), 3)
        for bare, rec in zip(phases["bare"], phases["record"], strict=True)
    ]
    if "record_session" in rates:
        emit(
            "audit.write.single.record_session.ratio",
            round(rates["record_session"] / rates["bare"], 3),
            "record/bare",
            backend=backend,
            writers=writers,
            concurrency=concurrency,
            note="record() in an ORM session (transaction()), the path of state changes",
        )
    common = {
        "backend": backend,
        "writers": writers,
        "concurrency": concurrency,
        "events_per_transaction": batch,
    }
    prefix = f"audit.write.{'single' if batch == 1 else 'batch'}"
    if sealer_mode != "loop":
        common["sealer_mode"] = sealer_mode
    for kind, ph in phases.items():
        emit(
            f"{prefix}.{kind}",
            round(rates[kind], 1),
            "events/s",
            **common,
            events=sum(p["events"] for p in ph),
            seconds=round(sum(p["seconds"] for p in ph), 2),
            per_round=[round(p["events"] / p["seconds"], 1) for p in ph],
            sealer=SEALER_NOTE[sealer_mode],
            sealer_sealed=sum(p["sealed"] for p in ph),
            sealer_checkpoints=sum(p["checkpoints"] for p in ph),
            sealer_busy_s=round(sum(p["busy_s"] for p in ph), 2),
            sealer_longest_seal_s=max(p["longest_seal_s"] for p in ph),
            unsealed_at_end_max=max(p["backlog"] for p in ph),
            loadavg_1min=load,
        )
    goal = GOAL_SINGLE if batch == 1 else GOAL_BATCH
    ratio = rates["record"] / rates["bare"]
    emit(
        f"{prefix}.ratio",
        round(ratio, 3),
        "record/bare",
        **common,
        ratio=round(ratio, 3),
        per_round=per_round,
        goal=goal,
        passed=ratio >= goal,
        loadavg_1min=load,
    )


def part_writes(backend: str, tmp_root: Path, parts: set[str], args: argparse.Namespace) -> None:
    plans: list[tuple[str, int]] = []
    if "a" in parts:
        plans.append(("a", 1))
    if "b" in parts:
        plans.append(("b", args.batch))
    for part, batch in plans:
        with spe_state(backend, tmp_root) as env:
            for writers, concurrency in ((1, "threads"), (8, "threads"), (8, "processes")):
                if args.quick and concurrency == "processes":
                    continue
                measure_writes(
                    env,
                    backend,
                    part,
                    batch,
                    writers,
                    concurrency,
                    args.seconds,
                    args.rounds,
                    args.sealer,
                )


# ---------------------------------------------------------------------------------------------
# (c) verification of a large log


_DETAILS_VARIANTS = [
    '{"purpose":"descriptive statistics","rows":12345}',
    '{"holder":"Holder Agency","institution":"Uni A","title":"Income and education"}',
    '{"note":""}',
    "{}",
    '{"columns":["age","income","region"],"rows":987,"suppressed":false}',
]
_ACTIONS = ["dataset.query", "project.create", "user.login", "output.request", "file.read"]


def event_rows(n: int) -> Iterator[tuple[Any, ...]]:
    """``n`` varied, realistic unsealed events (time, actor, action, target, project, ...)."""
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    step = dt.timedelta(microseconds=1000)
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    for i in range(n):
        yield (
            (base + i * step).strftime(fmt),
            f"user{i % 97}",
            _ACTIONS[i % 5],
            f"dataset:d{i % 1009}",
            None if i % 7 == 0 else f"project-{i % 31}",
            None if i % 3 == 0 else f"d{i % 1009}",
            _DETAILS_VARIANTS[i % 5],
        )


_COLUMNS = "time, actor, action, target, project, dataset, details"
_READ = (
    "SELECT seq, time, actor, action, target, project, dataset, details, leaf_hash "
    "FROM audit_events WHERE seq IS NOT NULL ORDER BY seq"
)


def bulk_insert(backend: str, n: int) -> None:
    from spe.db.session import get_engine

    if backend == "sqlite":
        conn = sqlite3.connect(sqlite_path(), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO audit_events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", event_rows(n)
        )
        conn.execute("COMMIT")
        conn.close()
        return
    raw = get_engine().raw_connection()
    try:
        cur = raw.driver_connection.cursor()
        with cur.copy(f"COPY audit_events ({_COLUMNS}) FROM STDIN") as copy:
            for row in event_rows(n):
                copy.write_row(row)
        raw.driver_connection.commit()
        cur.execute("ANALYZE audit_events")
        raw.driver_connection.commit()
    finally:
        raw.close()


def raw_read(backend: str, keep: bool) -> tuple[int, float, list[tuple[Any, ...]]]:
    """Read every sealed event the way the verifier does, with the raw driver; no hashing."""
    from spe.db.session import get_engine

    kept: list[tuple[Any, ...]] = []
    count = 0
    if backend == "sqlite":
        conn = sqlite3.connect(sqlite_path(), isolation_level=None)
        started = time.perf_counter()
        conn.execute("BEGIN")
        cur = conn.cursor()
        cur.execute(_READ)
        while rows := cur.fetchmany(20000):
            count += len(rows)
            if keep:
                kept.extend(rows)
        elapsed = time.perf_counter() - started
        conn.execute("ROLLBACK")
        conn.close()
        return count, elapsed, kept
    raw = get_engine().raw_connection()
    try:
        driver = raw.driver_connection
        started = time.perf_counter()
        cur = driver.cursor(name="bench_floor")
        cur.itersize = 20000
        cur.execute(_READ)
        while rows := cur.fetchmany(20000):
            count += len(rows)
            if keep:
                kept.extend(rows)
        cur.close()
        elapsed = time.perf_counter() - started
        driver.rollback()
    finally:
        raw.close()
    return count, elapsed, kept


def cpu_breakdown(backend: str, rows: list[tuple[Any, ...]]) -> None:
    """The verifier's per-event work on rows already in memory, step by step."""
    import hashlib

    from spe.audit.canonical import event_bytes
    from spe.audit.merkle import MerkleTree

    n = len(rows)
    sha256 = hashlib.sha256
    started = time.perf_counter()
    for seq, t, actor, action, target, project, dataset, details, _stored in rows:
        event_bytes(seq, t, actor, action, target, project, dataset, details)
    t_bytes = time.perf_counter() - started

    started = time.perf_counter()
    leaves = []
    append = leaves.append
    for seq, t, actor, action, target, project, dataset, details, stored in rows:
        leaf = sha256(
            b"\x00" + event_bytes(seq, t, actor, action, target, project, dataset, details)
        ).digest()
        if stored is None or bytes(stored) != leaf:
            raise RuntimeError(f"seq {seq} does not match its leaf hash")
        append(leaf)
    t_loop = time.perf_counter() - started

    started = time.perf_counter()
    MerkleTree(leaves)
    t_tree = time.perf_counter() - started
    for name, seconds in (
        ("event_bytes", t_bytes),
        ("leaf_loop", t_loop),
        ("merkle_tree", t_tree),
    ):
        emit(
            f"audit.verify.cpu.{name}",
            round(n / seconds, 1),
            "events/s",
            backend=backend,
            events=n,
            seconds=round(seconds, 3),
            note="in memory, no database: "
            + {
                "event_bytes": "event_bytes() per event",
                "leaf_loop": "the verifier's per-event loop (event_bytes, sha256, compare)",
                "merkle_tree": "MerkleTree(leaves) over all leaf hashes",
            }[name],
        )


def part_verify(backend: str, tmp_root: Path, args: argparse.Namespace) -> None:
    from spe.audit.seal import seal_all
    from spe.audit.verify import verify_log
    from spe.db import readonly
    from spe.db.session import get_engine
    from spe.keys.signing import audit_public_key

    n = args.events
    with spe_state(backend, tmp_root):
        already = unsealed() + tree_size()  # ensure_keys' own event
        say(f"{backend} c: inserting {n:,} events")
        started = time.perf_counter()
        bulk_insert(backend, n)
        elapsed = time.perf_counter() - started
        emit(
            "audit.verify.generate",
            round(n / elapsed, 1),
            "events/s",
            backend=backend,
            events=n,
            seconds=round(elapsed, 2),
            method="raw executemany" if backend == "sqlite" else "COPY",
        )

        say(f"{backend} c: sealing")
        started = time.perf_counter()
        checkpoints = seal_all()
        elapsed = time.perf_counter() - started
        total = n + already
        emit(
            "audit.seal_all",
            round(total / elapsed, 1),
            "events/s",
            backend=backend,
            events=total,
            checkpoints=len(checkpoints),
            seconds=round(elapsed, 2),
        )

        with readonly() as session:
            public = audit_public_key(session)
        say(f"{backend} c: verifying")
        started = time.perf_counter()
        report = verify_log(get_engine(), public)
        elapsed = time.perf_counter() - started
        if not report.ok or report.events_verified != total:
            raise RuntimeError(
                f"verify_log failed: ok={report.ok} events={report.events_verified} "
                f"findings={[str(f) for f in report.findings[:3]]}"
            )
        rate = total / elapsed
        emit(
            "audit.verify",
            round(rate, 1),
            "events/s",
            backend=backend,
            events=total,
            checkpoints=report.checkpoints_verified,
            seconds=round(elapsed, 2),
            goal=GOAL_VERIFY,
            passed=rate >= GOAL_VERIFY,
        )

        say(f"{backend} c: reading with the raw driver (floor)")
        count, elapsed, rows = raw_read(backend, keep=True)
        emit(
            "audit.verify.floor",
            round(count / elapsed, 1),
            "events/s",
            backend=backend,
            events=count,
            seconds=round(elapsed, 2),
            driver="sqlite3" if backend == "sqlite" else "psycopg server-side cursor",
            note="the verifier's query and batch size, rows fetched, no hashing",
        )
        cpu_breakdown(backend, rows)


def part_checkpoint_cost(backend: str, tmp_root: Path, m: int) -> None:
    """What each signed checkpoint adds to verify_log: the same ``m`` events sealed under one
    checkpoint, then under one checkpoint each (a quiet log sealed every second looks so)."""
    from spe.audit.seal import seal_all, seal_once
    from spe.audit.verify import verify_log
    from spe.db import readonly
    from spe.db.session import get_engine
    from spe.keys.signing import audit_public_key

    timing: dict[str, tuple[float, int]] = {}
    for label in ("one", "each"):
        with spe_state(backend, tmp_root):
            bulk_insert(backend, m)
            if label == "one":
                seal_all()
            else:
                while seal_once(batch_max=1) is not None:
                    pass
            with readonly() as session:
                public = audit_public_key(session)
            started = time.perf_counter()
            report = verify_log(get_engine(), public)
            elapsed = time.perf_counter() - started
            if not report.ok:
                raise RuntimeError(f"verify_log failed: {report.findings[:3]}")
            timing[label] = (elapsed, report.checkpoints_verified)
    (t_one, c_one), (t_each, c_each) = timing["one"], timing["each"]
    per_checkpoint = (t_each - t_one) / (c_each - c_one)
    emit(
        "audit.verify.per_checkpoint",
        round(per_checkpoint * 1e6, 1),
        "us/checkpoint",
        backend=backend,
        events=m + 1,
        checkpoints=[c_one, c_each],
        seconds=[round(t_one, 3), round(t_each, 3)],
        note="extra verify time per signed checkpoint (signature check and root)",
    )


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--events", type=int, help="events to verify (default 1,000,000)")
    parser.add_argument("--backend", choices=BACKENDS, action="append", help="default: both")
    parser.add_argument("--part", choices="abc", action="append", help="default: all")
    parser.add_argument("--seconds", type=float, help="seconds per write phase")
    parser.add_argument("--rounds", type=int, help="bare/record alternations per figure")
    parser.add_argument("--batch", type=int, default=1000, help="events per transaction in (b)")
    parser.add_argument(
        "--sealer",
        choices=tuple(SEALER_NOTE),
        default="loop",
        help="sealer during (a)/(b): run_sealer's loop (default, as production), one "
        "seal_once a second, or none",
    )
    parser.add_argument(
        "--checkpoints", type=int, help="checkpoints for the per-checkpoint cost (default 2,000)"
    )
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 20_000 if args.quick else 1_000_000
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 5.0
    if args.checkpoints is None:
        args.checkpoints = 200 if args.quick else 2_000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    parts = set(args.part or "abc")
    backends = args.backend or list(BACKENDS)

    failed = False
    with tempfile.TemporaryDirectory(prefix="spe-bench-audit-") as tmp:
        tmp_root = Path(tmp)
        for backend in backends:
            if backend == "postgresql":
                reason = postgres_unreachable()
                if reason:
                    emit(
                        "audit.postgresql",
                        None,
                        None,
                        backend=backend,
                        skipped=True,
                        reason=reason,
                    )
                    say(f"skipping PostgreSQL: {reason}")
                    continue
            try:
                if parts & {"a", "b"}:
                    part_writes(backend, tmp_root, parts, args)
                if "c" in parts:
                    part_verify(backend, tmp_root, args)
                    part_checkpoint_cost(backend, tmp_root, args.checkpoints)
            except Exception as exc:
                failed = True
                emit(f"audit.{backend}.error", None, None, backend=backend, error=repr(exc))
                say(f"{backend} failed: {exc!r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
