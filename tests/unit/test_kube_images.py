"""The images (docker/), checked statically: there is no Docker engine on the development
machine. Each Dockerfile is multi-stage with base images pinned by version, runs as a non-root
user in its final stage and documents its build command; the workspace's final stage installs
no compiler, package manager or network tool."""

from __future__ import annotations

import re
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
            # Only the build stage's environment and configuration, and the templates.
            assert rest.startswith("--from=build") or rest.startswith("notebooks_templates"), rest
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
