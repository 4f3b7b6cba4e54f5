"""Image benchmark: SPE's two images (docker/) built and run with podman (scripts/images.sh).

Figures: the cached rebuild (inputs unchanged: the content-hash tag exists, nothing is built),
the rebuild after a change to spe/ (podman's layer cache: only SPE's own layers), the image
sizes, and the workspace container's start to first answer (jupyterhub-singleuser on a pod
beside a stand-in for the hub's API, as tests/containers runs it, timed from `podman run` to
the first answer of the server's API through the pod's published port). With --cold, also
each image built from scratch (--no-cache: about 5 to 10 minutes each on 2 cores).

    .venv/bin/python benchmarks/images.py [--cold] [--starts N] [--quick] [--no-rebuild]

Goals (issue 17): cached rebuild <= 10 s, start to answer <= 3 s, workspace image <= 1 GB.
Prints one JSON line per figure on stdout, progress on stderr. Skips (one JSON line saying
why) where podman is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "scripts" / "images.sh"
HARNESS = REPO / "tests" / "containers" / "harness.py"


def emit(name: str, value: float | int | None, unit: str, **extra: Any) -> None:
    if isinstance(value, float):
        value = round(value, 3)
    print(json.dumps({"name": name, "value": value, "unit": unit, **extra}), flush=True)


def note(text: str) -> None:
    print(f"[images] {text}", file=sys.stderr, flush=True)


def run(*args: str, timeout: float = 3600) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed: {done.stderr[-2000:]}")
    return done.stdout


def timed(*args: str) -> tuple[float, str]:
    started = time.monotonic()
    out = run(*args)
    return time.monotonic() - started, out


def build_args(image: str, context: Path, *extra: str) -> list[str]:
    """podman build as scripts/images.sh runs it (base images, CA mount), into a scratch tag."""
    bases = run(str(IMAGES), "bases").split()
    python, node = bases
    return [
        "podman", "build", "--pull=never", "--layers", "--quiet",
        "--build-arg", f"PYTHON_IMAGE={python}", "--build-arg", f"NODE_IMAGE={node}",
        "--build-arg", "BUILD_CA=/run/spe-build-ca/ca-certificates.crt",
        "-v", "/etc/ssl/certs:/run/spe-build-ca:ro",
        "-t", f"localhost/spe-bench-{image}:{uuid.uuid4().hex[:8]}", *extra,
        "-f", str(context / "docker" / f"Dockerfile.{image}"), str(context),
    ]  # fmt: skip


def changed_spe_context(scratch: Path) -> Path:
    """The build context with one line added to a module of spe/ (the repository untouched)."""
    context = scratch / "context"
    names = ["pyproject.toml", "README.md", "package.json", "package-lock.json", ".dockerignore"]
    context.mkdir()
    for name in names:
        shutil.copy(REPO / name, context / name)
    for folder in ("spe", "policies", "notebooks_templates", "docker"):
        shutil.copytree(
            REPO / folder, context / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    target = context / "spe" / "workspaces" / "layout.py"
    target.write_text(target.read_text() + f"\n# benchmark change {uuid.uuid4().hex}\n")
    return context


def size_of(name: str) -> int:
    return int(run("podman", "image", "inspect", "--format", "{{.Size}}", name).strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_to_answer(workspace: str, controlplane: str, starts: int) -> list[float]:
    """Seconds from `podman run` of the workspace container to the server's first answer."""
    port = free_port()
    pod = f"spe-bench-{uuid.uuid4().hex[:8]}"
    run("podman", "pod", "create", "--name", pod, "--publish", f"127.0.0.1:{port}:8888")
    token = uuid.uuid4().hex
    prefix = "/user/researcher/study/"
    try:
        run(
            "podman", "run", "--detach", "--pod", pod, "--name", f"{pod}-hub", "--pull=never",
            "--env", f"HUB_STANDIN_TOKENS={json.dumps([token])}",
            "--volume", f"{HARNESS}:/harness/harness.py:ro", controlplane,
            "python", "/harness/harness.py", "hub", "--port", "8081",
        )  # fmt: skip
        time.sleep(2)
        env = {
            "JUPYTERHUB_API_TOKEN": token,
            "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
            "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-researcher-study",
            "JUPYTERHUB_USER": "researcher",
            "JUPYTERHUB_SERVER_NAME": "study",
            "JUPYTERHUB_SERVICE_PREFIX": prefix,
            "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:8888{prefix}",
            "JUPYTERHUB_BASE_URL": "/",
            "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
            "JUPYTERHUB_OAUTH_ACCESS_SCOPES": json.dumps(
                ["access:servers!server=researcher/study", "access:servers!user=researcher"]
            ),
        }
        times = []
        for i in range(starts):
            name = f"{pod}-ws{i}"
            home = tempfile.mkdtemp(prefix="spe-bench-home-")
            tmp = tempfile.mkdtemp(prefix="spe-bench-tmp-")
            shutil.chown(home, 1000, 1000)
            shutil.chown(tmp, 1000, 1000)
            args = ["podman", "run", "--detach", "--pod", pod, "--name", name, "--pull=never"]
            args += ["--user", "1000:1000", "--read-only", "--read-only-tmpfs=false"]
            args += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
            args += ["--volume", f"{home}:/home/researcher", "--volume", f"{tmp}:/tmp"]
            for key, value in env.items():
                args += ["--env", f"{key}={value}"]
            started = time.monotonic()
            run(*args, workspace)
            url = f"http://127.0.0.1:{port}{prefix}api"
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() - started > 120:
                    raise RuntimeError(run("podman", "logs", name)[-2000:])
                time.sleep(0.05)
            times.append(time.monotonic() - started)
            note(f"start {i + 1}/{starts}: {times[-1]:.2f} s")
            # Not checked: podman sometimes reports a container it just stopped as "improper".
            subprocess.run(["podman", "rm", "--force", "--time", "1", name], capture_output=True)
            shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)
        return times
    finally:
        subprocess.run(["podman", "pod", "rm", "--force", "--time", "1", pod], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="also build both images from scratch")
    parser.add_argument("--starts", type=int, default=5, help="workspace starts to time")
    parser.add_argument("--quick", action="store_true", help="2 starts")
    parser.add_argument(
        "--no-rebuild", action="store_true", help="skip the rebuild after a change to spe/"
    )
    args = parser.parse_args()
    if shutil.which("podman") is None:
        emit("images.skipped", None, "", reason="podman is not installed (make setup)")
        return 0
    names = {}
    for image in ("workspace", "controlplane"):
        note(f"{image}: building if its inputs changed (cold: several minutes)")
        names[image] = run(str(IMAGES), image).strip().splitlines()[-1]
        seconds, _ = timed(str(IMAGES), image)
        emit(f"images.{image}.cached_rebuild", seconds, "s", goal="<= 10", image=names[image])
        emit(f"images.{image}.size", round(size_of(names[image]) / 1e6), "MB")
    with tempfile.TemporaryDirectory(prefix="spe-bench-images-") as scratch:
        context = changed_spe_context(Path(scratch))
        for image in () if args.no_rebuild else ("workspace", "controlplane"):
            note(f"{image}: rebuilding after a change to spe/ (layer cache)")
            seconds, out = timed(*build_args(image, context))
            emit(f"images.{image}.rebuild_after_spe_change", seconds, "s")
            run("podman", "rmi", out.strip().splitlines()[-1])
        if args.cold:
            for image in ("workspace", "controlplane"):
                note(f"{image}: building from scratch (--no-cache)")
                seconds, out = timed(*build_args(image, REPO, "--no-cache"))
                emit(f"images.{image}.cold_build", seconds, "s")
                run("podman", "rmi", out.strip().splitlines()[-1])
    starts = 2 if args.quick else args.starts
    times = start_to_answer(names["workspace"], names["controlplane"], starts)
    emit(
        "images.workspace.start_to_answer",
        statistics.median(times),
        "s",
        goal="<= 3",
        max=round(max(times), 3),
        starts=starts,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
