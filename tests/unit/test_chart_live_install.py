"""The live install test (tests/integration/test_kube_live.py) can run where a cluster is: it
finds helm on PATH or the project's own in .venv/bin (where `make setup` puts it), and it is the
one test that needs a cluster, skipped with its reason where KUBECONFIG is not set."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
LIVE = REPO / "tests" / "integration" / "test_kube_live.py"


def _live_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kube_live_under_test", LIVE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho helm\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_live_test_finds_the_projects_helm_when_none_is_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = _live_module()
    repo = tmp_path / "clone"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert live.find_helm(repo) is None
    project_helm = _executable(repo / ".venv" / "bin" / "helm")
    assert live.find_helm(repo) == str(project_helm)
    # One on PATH is taken first (an operator's own helm).
    on_path = _executable(tmp_path / "bin" / "helm")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert live.find_helm(repo) == str(on_path)


def test_the_live_test_skips_without_a_cluster_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    live = _live_module()
    first = live.pytestmark[0]
    assert first.name == "skipif" and first.args[0] is True
    assert "KUBECONFIG is not set" in first.kwargs["reason"]


def test_the_live_test_is_the_only_test_that_needs_a_cluster() -> None:
    """Only it waits for a cluster (KUBECONFIG set); others set KUBECONFIG to prove refusals."""
    needing = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").rglob("test_*.py")
        if 'environ.get("KUBECONFIG")' in p.read_text() and p != Path(__file__).resolve()
    )
    assert needing == ["tests/integration/test_kube_live.py"]
