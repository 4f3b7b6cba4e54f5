"""Run every benchmark in benchmarks/ (each as its own subprocess), streaming its JSON lines.

The benchmarks are found, not listed: every benchmarks/*.py but this runner and _private
helpers (audit.py, ingest.py, sdc.py; sdc.py runs ACRO in .venv-acro itself).

Each benchmark prints one JSON line per figure on stdout; this runner passes them through as
they come (progress on stderr passes through too) and exits non-zero if any benchmark failed.
Arguments other than --only are handed to every benchmark (e.g. --quick, --events N).

    .venv/bin/python benchmarks/run.py [--only NAME] [--quick] [--events N] [...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[Path]:
    """Every benchmark script: benchmarks/*.py except this runner and _private helpers."""
    return sorted(
        p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this benchmark (e.g. audit)"
    )
    args, passed = parser.parse_known_args(argv)
    scripts = discover()
    if args.only:
        wanted = {name.removesuffix(".py") for name in args.only}
        unknown = wanted - {p.stem for p in scripts}
        if unknown:
            parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
        scripts = [p for p in scripts if p.stem in wanted]
    failures = []
    for script in scripts:
        print(f"[run] {script.name} {' '.join(passed)}".rstrip(), file=sys.stderr, flush=True)
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, str(script), *passed],
            cwd=HERE.parent,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
        code = proc.wait()
        elapsed = time.monotonic() - started
        print(f"[run] {script.name} exited {code} after {elapsed:.0f} s", file=sys.stderr)
        if code != 0:
            failures.append(script.stem)
            print(
                json.dumps({"name": f"{script.stem}.failed", "value": code, "unit": "exit code"}),
                flush=True,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
