"""The images (docker/), checked statically (tests/containers builds and runs them with podman).
Each Dockerfile is multi-stage with base images pinned by version, runs as a non-root
user in its final stage and documents its build command; the workspace's final stage installs
no compiler, package manager or network tool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "docker"
IMAGES = ["Dockerfile.controlplane", "Dockerfile.workspace"]
FORBIDDEN_IN_WORKSPACE = re.compile(
    r"\b(gcc|g\+\+|cc1|clang|build-essential|make|curl|wget|netcat|ncat|nmap|socat|"
    r"openssh|ssh|telnet|ftp|git)\b"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(ARG defaults before the first FROM, stages) of a Dockerfile; continuations joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif word == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            stages[-1].instructions.append((word, rest))
    return args, stages


@pytest.mark.parametrize("name", IMAGES)
def test_images_are_multi_stage_with_pinned_bases(name: str) -> None:
    _args, stages = parse(DOCKER / name)
    assert len(stages) >= 2
    own = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in own:
            continue
        _image, _, tag = stage.base.partition(":")
        assert tag and tag != "latest", stage.base
        assert re.match(r"^\d+\.\d+(\.\d+)?", tag), f"{stage.base} is not pinned to a version"


@pytest.mark.parametrize("name", IMAGES)
def test_the_final_stage_runs_as_a_non_root_user(name: str) -> None:
    _args, stages = parse(DOCKER / name)
    users = [rest for word, rest in stages[-1].instructions if word == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root")
    assert int(user) >= 1000


def test_the_workspace_final_stage_has_no_compiler_package_manager_or_network_tool() -> None:
    _args, stages = parse(DOCKER / "Dockerfile.workspace")
    final = stages[-1]
    for word, rest in final.instructions:
        if word == "RUN":
            assert "apt-get install" not in rest and "pip install" not in rest, rest
            assert not FORBIDDEN_IN_WORKSPACE.search(rest), rest
        if word == "COPY":
            # Only the earlier stages' environment, SPE and configuration, and the templates.
            own = {s.name for s in stages[:-1]}
            source = rest.split()[0]
            assert source.removeprefix("--from=") in own or source == "notebooks_templates", rest
    runs = " ".join(rest for word, rest in final.instructions if word == "RUN")
    assert "site-packages/pip" in runs  # pip removed
    # The compilers were in the build stage only.
    build = " ".join(rest for s in stages[:-1] for word, rest in s.instructions if word == "RUN")
    assert "build-essential" in build


def test_the_workspace_image_carries_the_cell_audit_configuration() -> None:
    text = (DOCKER / "Dockerfile.workspace").read_text()
    assert "write_config_dir(Path('/etc/spe-workspace')" in text
    from spe.workspaces.workspace_config import workspace_environment

    for key, value in workspace_environment("/opt/spe-workspace/bin/python").items():
        assert f"{key}={value}" in text, key


@pytest.mark.parametrize("name", IMAGES)
def test_build_commands_are_documented(name: str) -> None:
    text = (DOCKER / name).read_text()
    assert f"docker build -f docker/{name}" in text
    assert f"docker build -f docker/{name}" in (DOCKER / "README.md").read_text()


def test_the_workspace_user_is_the_one_the_pod_runs_as() -> None:
    from spe.workspaces.kube_objects import WORKSPACE_UID

    assert f"USER {WORKSPACE_UID}:{WORKSPACE_UID}" in (DOCKER / "Dockerfile.workspace").read_text()


# --- the workspace server on a read-only configuration folder (the pod's read-only root) -------

PROBE_SERVER_START = """
import json
import os
from jupyter_server.serverapp import ServerApp

app = ServerApp()
# The first two steps of JupyterApp.initialize, where the server died on the read-only root.
app.migrate_config()
app.load_config_file()
print(json.dumps({"connection": app.config.ServerApp.kernel_websocket_connection_class}))
"""


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def _server_start_against(config: Path, *wrapper: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(config.parent / "home"),
        "JUPYTER_CONFIG_DIR": str(config / "jupyter"),
        "JUPYTER_CONFIG_PATH": str(config / "jupyter"),
        "JUPYTER_DATA_DIR": str(config / "data"),
        "JUPYTER_PATH": str(config / "data"),
        "JUPYTER_RUNTIME_DIR": str(config.parent / "runtime"),
        "IPYTHONDIR": str(config / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    return subprocess.run(
        [*wrapper, sys.executable, "-c", PROBE_SERVER_START],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_workspace_server_starts_on_a_read_only_config_folder_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """The folder is mounted read-only with bwrap (as the pod's read-only root and the one-machine
    sandbox mount it; chmod would not stop root, who runs the tests here)."""
    from spe.workspaces.workspace_config import write_config_dir

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bwrap is not installed: the read-only mount needs it (make setup)")
    config = write_config_dir(tmp_path / "spe-workspace", sys.executable)
    (tmp_path / "home").mkdir()
    before = _tree(config)
    read_only = [bwrap, "--dev-bind", "/", "/", "--ro-bind", str(config), str(config), "--"]
    done = _server_start_against(config, *read_only)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Read-only file system" not in done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "connection": "spe.workspaces.cell_audit.AuditedConnection"
    }
    # And where it could write (a writable folder), the migration path writes nothing either.
    done = _server_start_against(config)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _tree(config) == before


# --- the hub's HTTP client (z2jh selects tornado's curl client) --------------------------------


def test_the_controlplane_image_builds_pycurl_against_debians_libcurl() -> None:
    """z2jh's hub configuration calls AsyncHTTPClient.configure(CurlAsyncHTTPClient) before any
    extra configuration runs, so the hub dies without pycurl; the PyPI wheel's own libcurl looks
    for CA certificates where Debian has none, so the image builds it against Debian's."""
    import tomllib

    _args, stages = parse(DOCKER / "Dockerfile.controlplane")
    build = next(s for s in stages if s.name == "build")
    runs = " ".join(rest for word, rest in build.instructions if word == "RUN")
    assert "libcurl4-openssl-dev" in runs
    assert re.search(r"pip install --no-binary[ =]pycurl\b", runs), runs
    final = " ".join(rest for word, rest in stages[-1].instructions if word == "RUN")
    assert re.search(r"apt-get install [^&]*\blibcurl4\b[^&]*\bca-certificates\b", final)
    pyproject = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
    assert any(d.startswith("pycurl") for d in pyproject["project"]["dependencies"])


# --- the build context (.dockerignore) ----------------------------------------------------------


def _ignore_rules() -> list[str]:
    lines = (DOCKER.parent / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not [r for r in rules if r.startswith("!")], "exceptions are not modelled here"
    return rules


def _matches(pattern: list[str], parts: list[str]) -> bool:
    """Docker's rule matching (Go's filepath.Match per segment, ** for any segments)."""
    import fnmatch

    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], pattern[0])
        and _matches(pattern[1:], parts[1:])
    )


def _ignored(path: str, rules: list[str]) -> bool:
    parts = path.split("/")
    # A folder that matches leaves out everything below it.
    return any(
        _matches(rule.strip("/").split("/"), parts[:n])
        for rule in rules
        for n in range(1, len(parts) + 1)
    )


def test_the_build_context_leaves_out_virtualenvs_state_and_caches() -> None:
    rules = _ignore_rules()
    for path in (
        ".git/config",
        ".venv/bin/python",
        ".venv-workspace/bin/python",
        ".venv-acro/bin/python",
        "node_modules/configurable-http-proxy/package.json",
        "var/spe.db",
        "test-artifacts/story.html",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        ".hypothesis/examples/x",
        "spe/workspaces/__pycache__/layout.cpython-311.pyc",
        "spe.egg-info/PKG-INFO",
        "helm/spe/charts/jupyterhub/Chart.yaml",
    ):
        assert _ignored(path, rules), path
    # Everything the Dockerfiles copy from the context is still sent.
    for name in IMAGES:
        _args, stages = parse(DOCKER / name)
        for stage in stages:
            for word, rest in stage.instructions:
                if word == "COPY" and not rest.startswith("--from"):
                    for source in rest.split()[:-1]:
                        assert not _ignored(source.rstrip("/"), rules), (name, source)
                        assert (DOCKER.parent / source).exists(), (name, source)


def test_the_build_context_of_this_checkout_is_small() -> None:
    """Measured on the development checkout: 2.8 MiB (342 files) sent instead of 4.4 GB."""
    root = DOCKER.parent
    rules = _ignore_rules()
    total = 0
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        dirs[:] = [d for d in dirs if not _ignored(prefix + d, rules)]
        total += sum(
            (Path(folder) / f).lstat().st_size for f in files if not _ignored(prefix + f, rules)
        )
    assert total < 50 * 2**20, f"the build context is {total / 2**20:.0f} MiB"


def test_a_change_to_spe_rebuilds_only_spes_own_layers() -> None:
    """In both images spe/ is copied after the third-party environment is installed, in a stage
    of its own, and the final image copies it last: a change to spe/ rebuilds SPE's few
    megabytes, not the environment (benchmarks/images.py measures it). README.md, which changes
    often, is not copied (pyproject's readme is an empty file in the build)."""
    for name in IMAGES:
        _args, stages = parse(DOCKER / name)
        spe_stage = next(s for s in stages if any(r.startswith("spe ") for w, r in s.instructions))
        assert spe_stage is not stages[-1] and spe_stage.name == "spe"
        heavy = next(s for s in stages if s.name == "build")
        assert not any(r.startswith("spe ") for w, r in heavy.instructions if w == "COPY")
        final = [r for w, r in stages[-1].instructions if w == "COPY"]
        spe_copies = [i for i, r in enumerate(final) if r.startswith("--from=spe")]
        assert spe_copies and spe_copies[-1] == len(final) - 1
        assert all(i > 0 for i in spe_copies)
        for stage in stages:
            for word, rest in stage.instructions:
                assert not (word == "COPY" and "README.md" in rest.split()), (name, rest)
