"""SPE's images run for real with podman (docker/; scripts/images.sh builds them, each only when
its inputs changed). Skipped, with the reason, only where podman cannot run; under CI a missing
podman fails. One container set per image is shared by each module's tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# A cold build of an image takes 5-10 minutes on this machine kind; a warm one a second.
BUILD_TIMEOUT = 1800


def _podman_missing() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (make setup installs it as root)"
    done = subprocess.run(
        ["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        return f"podman cannot run here: {done.stderr.strip()[-300:]}"
    return None


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} failed: {done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="session")
def built() -> Callable[[str], str]:
    """The name of an image built from the current inputs (built here if it is not yet)."""
    reason = _podman_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the container tests")
        pytest.skip(reason)
    names: dict[str, str] = {}

    def build(image: str) -> str:
        if image not in names:
            done = subprocess.run(
                [str(REPO / "scripts" / "images.sh"), image],
                capture_output=True,
                text=True,
                check=False,
                timeout=BUILD_TIMEOUT,
                cwd=REPO,
            )
            assert done.returncode == 0, done.stderr[-4000:]
            names[image] = done.stdout.strip().splitlines()[-1]
        return names[image]

    return build


def wait_for(check: Callable[[], Any], seconds: float, what: str, logs: Callable[[], str]) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"waited {seconds} s for {what}; logs:\n{logs()[-4000:]}")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def cleanup() -> Iterator[list[list[str]]]:
    """podman commands run at the end of the module (removing what it started)."""
    undo: list[list[str]] = []
    yield undo
    for args in reversed(undo):
        podman(*args, check=False, timeout=120)


def inspect(name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(podman("inspect", name).stdout)
    return found[0]
