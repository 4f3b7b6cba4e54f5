"""Ingest benchmark (issue 3): pseudonym floor, end-to-end ingest, project extraction, and
the cost of encryption at rest (issue 16).

Prints one JSON line per figure. Sizes: 1 M and 10 M persons (``--quick``: 100 k and 1 M;
``--persons N``: N, repeatable).
Each ingest runs in a fresh ``spe`` process pinned to one core (``taskset -c 0``) so its
rows/s is a one-core figure and its peak RSS is its own. The peer is the per-item keyed hash
the issue measured (HMAC-SHA256 with a precomputed key context, ``.copy()`` per item), timed
in the same run. Encryption at rest is measured against the same ingest with the sealing
replaced by a plain pass-through (what the ingest wrote before issue 16), alternating the two on
copies of one prepared state, best of ``--rounds`` each; the ratio is printed as one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SPE = [sys.executable, "-m", "spe.cli"]
# The ingest as it was before encryption at rest: the same code, with the sealing writer
# replaced by one that writes the plaintext through (hashing it, as the sealing writer does).
PLAIN_SHIM = """
import hashlib, sys
import spe.ingest.pipeline as pipeline

class PlainWriter:
    def __init__(self, cipher, sink, context, chunk=0):
        self.sink, self.size, self.closed = sink, 0, False
        self.digest = hashlib.sha256()
    def write(self, data):
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += len(view)
        return self.sink.write(view)
    def tell(self):
        return self.size
    def flush(self):
        self.sink.flush()
    def writable(self):
        return True
    def close(self):
        self.sha256 = self.digest.hexdigest()
        self.sink.flush()
        self.closed = True

pipeline.seal_dataset_stream = PlainWriter
from spe.cli import main
main(sys.argv[1:])
"""


def emit(name: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"name": name, "value": round(value, 3), "unit": unit, **extra}), flush=True)


def floor(n: int) -> float:
    from spe.keys.pseudonyms import HolderPseudonymiser

    rng = np.random.default_rng(1)
    numbers = rng.integers(10**10, 10**11 - 1, n, dtype=np.int64)
    kinds = np.full(n, 4, dtype=np.uint8)
    p = HolderPseudonymiser(os.urandom(32))
    started = time.perf_counter()
    step = 1_000_000
    for i in range(0, n, step):
        p.pseudonyms(numbers[i : i + step], kinds[i : i + step])
    rate = n / (time.perf_counter() - started)
    emit("ingest.pseudonym_floor", rate, "identifiers/s", n=n, primitive="AES-256 PRP, batched")
    return rate


def hmac_peer(n: int) -> float:
    key = os.urandom(32)
    base = hmac.new(key, digestmod=hashlib.sha256)
    items = [str(10**10 + i).encode() for i in range(n)]
    started = time.perf_counter()
    for item in items:
        h = base.copy()
        h.update(item)
        h.digest()
    rate = n / (time.perf_counter() - started)
    emit("ingest.peer_hmac_per_item", rate, "identifiers/s", n=n)
    return rate


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
    env["SPE_STATE_DIR"] = str(state)
    return env


def _run(
    args: list[str], env: dict[str, str], pin: bool = True, plain: bool = False
) -> tuple[float, float, str]:
    """Run an spe command (``plain``: with the ingest's sealing replaced by a pass-through);
    returns (seconds, peak RSS MiB of the child, stdout)."""
    prefix = ["taskset", "-c", "0"] if pin and shutil.which("taskset") else []
    command = [sys.executable, "-c", PLAIN_SHIM] if plain else SPE
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    out = subprocess.run(
        [*prefix, *command, *args], env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if out.returncode != 0:
        raise SystemExit(f"spe {' '.join(args)} failed: {out.stderr.strip()}")
    # ru_maxrss of children is the max over all waited children: measure in growing order.
    return seconds, max(after, before) / 1024, out.stdout


def encryption_cost(persons: int, source: Path, prepared: Path, work: Path, rounds: int) -> None:
    """The ingest with encryption at rest against the same ingest writing plaintext, in the
    same run: alternating, each on a fresh copy of one prepared state, best of ``rounds``."""
    best = {"plain": 0.0, "sealed": 0.0}
    rows = 0
    for i in range(rounds):
        for kind in ("plain", "sealed") if i % 2 == 0 else ("sealed", "plain"):
            state = work / f"state-{persons}-{kind}-{i}"
            shutil.copytree(prepared, state)
            env = _env(state)
            args = ["--as", "holder", "dataset", "ingest", str(source), "--policy", "population"]
            _run([*args, "--inline"], env, plain=kind == "plain")
            report = json.loads(_run(["dataset", "report", "population"], env, pin=False)[2])
            rows = report["rows_read"]
            best[kind] = max(best[kind], rows / report["seconds"])
            shutil.rmtree(state, ignore_errors=True)
    for kind, rate in best.items():
        emit(f"ingest.in_process.{kind}", rate, "rows/s", rows=rows, one_core=True, rounds=rounds)
    emit(
        "ingest.encryption_at_rest_ratio",
        best["sealed"] / best["plain"],
        "ratio",
        rows=rows,
        sealed_rows_per_s=round(best["sealed"]),
        plain_rows_per_s=round(best["plain"]),
        target=">= 0.9",
        note="AES-256-GCM chunks sealed as written vs the same ingest writing plaintext; each "
        "the ingest's own time, best of the rounds",
    )


def ingest_run(persons: int, work: Path, peer: float, floor_rate: float, rounds: int = 2) -> None:
    from spe.ingest.synth import generate_registry

    state = work / f"state-{persons}"
    registry = work / f"registry-{persons}"
    env = _env(state)
    started = time.perf_counter()
    generate_registry(registry, persons, seed=7)
    emit(
        "ingest.synth_generate",
        persons / (time.perf_counter() - started),
        "persons/s",
        persons=persons,
    )
    for args in (
        ["init", "--operator", "op"],
        ["--as", "op", "org", "add", "Demo Registry Agency", "--kind", "holder"],
        ["--as", "op", "org", "add", "Uni", "--kind", "institution"],
        [
            "--as",
            "op",
            "user",
            "add",
            "holder",
            "--org",
            "Demo Registry Agency",
            "--role",
            "holder_reviewer",
        ],
        ["--as", "op", "user", "add", "res", "--org", "Uni", "--role", "researcher"],
    ):
        _run(args, env, pin=False)
    source = registry / "population.csv"
    if rounds:
        prepared = work / f"state-{persons}-prepared"
        shutil.copytree(state, prepared)
        encryption_cost(persons, source, prepared, work, rounds)
        shutil.rmtree(prepared, ignore_errors=True)
    seconds, rss, _ = _run(
        ["--as", "holder", "dataset", "ingest", str(source), "--policy", "population", "--inline"],
        env,
    )
    with open(source, "rb") as fh:
        rows = sum(1 for _ in fh) - 1
    rate = rows / seconds
    emit(
        "ingest.end_to_end",
        rate,
        "rows/s",
        rows=rows,
        seconds=round(seconds, 2),
        one_core=True,
        ratio_to_floor=round(rate / floor_rate, 3),
        ratio_to_peer_hmac=round(rate / peer, 3),
    )
    report = json.loads(_run(["dataset", "report", "population"], env, pin=False)[2])
    emit(
        "ingest.in_process",
        rows / report["seconds"],
        "rows/s",
        rows=rows,
        seconds=report["seconds"],
        one_core=True,
        note="the ingest's own time (scan, validate, pseudonymise, write), without the CLI's "
        "start-up",
        ratio_to_floor=round(rows / report["seconds"] / floor_rate, 3),
        ratio_to_peer_hmac=round(rows / report["seconds"] / peer, 3),
    )
    emit("ingest.peak_rss", rss, "MiB", rows=rows)
    _run(
        [
            "--as",
            "res",
            "project",
            "create",
            "bench-p",
            "--holder",
            "Demo Registry Agency",
            "--purpose",
            "bench",
            "--end",
            "2030-01-01",
        ],
        env,
        pin=False,
    )
    _run(["--as", "holder", "project", "approve", "bench-p"], env, pin=False)
    seconds, rss, out = _run(
        [
            "--as",
            "holder",
            "project",
            "grant",
            "bench-p",
            "population",
            "--variables",
            "birth_date,sex,municipality",
            "--generalise",
            "birth_date=year",
            "--inline",
        ],
        env,
    )
    emit(
        "ingest.project_extraction",
        rows / seconds,
        "rows/s",
        rows=rows,
        seconds=round(seconds, 2),
        one_core=True,
    )
    job = re.search(r"job ([0-9a-f-]{36})", out)
    if job:
        status = _run(["task", "status", job.group(1)], env, pin=False)[2]
        own = re.search(r'"seconds": ([0-9.]+)', status)
        if own:
            emit(
                "ingest.project_extraction.in_process",
                rows / float(own.group(1)),
                "rows/s",
                rows=rows,
                seconds=float(own.group(1)),
                one_core=True,
                note="the extraction's own time, without the CLI's start-up",
            )
    emit("ingest.project_extraction.peak_rss", rss, "MiB", rows=rows)
    shutil.rmtree(registry, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 k and 1 M persons")
    parser.add_argument(
        "--persons",
        type=int,
        action="append",
        metavar="N",
        help="ingest a population of N persons instead (repeatable)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds of the plain-vs-encrypted comparison per size (0: skip it)",
    )
    args = parser.parse_args()
    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000]
    if args.persons:
        sizes = sorted(args.persons)  # growing: peak RSS of children is a running maximum
    floor_rate = floor(sizes[-1])
    peer = hmac_peer(1_000_000)
    emit("ingest.floor_vs_peer", floor_rate / peer, "ratio")
    with tempfile.TemporaryDirectory(prefix="spe-bench-ingest-") as tmp:
        for persons in sizes:
            ingest_run(persons, Path(tmp), peer, floor_rate, args.rounds)


if __name__ == "__main__":
    main()
