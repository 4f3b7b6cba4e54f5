"""An aggregate-only dataset's rows never reach a workspace, checked from inside a real sandbox.

The mounts come from the real spawner decision (``admit_workspace`` on a real SPE where project
'study' has the aggregate-only 'health' and the rows dataset 'people'); the sandbox is started
with exactly those mounts, and a program inside looks for the health rows everywhere it can.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from spe.accounts.service import get_user
from spe.config import reset_settings
from spe.db import readonly, transaction
from spe.projects.extracts import current_extracts, extract, grant_dataset
from spe.projects.service import get_project
from spe.storage import data_storage
from spe.workspaces import layout
from spe.workspaces.sandbox_run import remove_workspace_user
from spe.workspaces.spawner import admit_workspace
from tests.integration.dp_world import make_health
from tests.security.conftest import Sandboxes

pytestmark = pytest.mark.security

HUNT = r"""
attempt("list data", listdir, "/data")
attempt("read rows dataset", lambda: len(read("/data/people/data.parquet")))
attempt("read health mount", read, "/data/health/data.parquet")
attempt("read health on the host path", read, HOST["health_file"])
attempt("list health folder on the host path", listdir, HOST["health_dir"])
def find_parquet():
    hits = []
    for dirpath, dirnames, filenames in os.walk("/"):
        if dirpath in ("/proc", "/sys", "/dev", "/usr", HOST["env_dir"]):  # code, not data
            dirnames[:] = []
            continue
        hits += [os.path.join(dirpath, f) for f in filenames if f.endswith(".parquet")]
    return sorted(hits)
attempt("find parquet files", find_parquet)
def load_health():
    # The fake airlock here never answers; with no airlock, load cannot ask which datasets are
    # aggregate-only, and still finds no rows.
    os.environ["SPE_WORKSPACE_AIRLOCK_SOCKET"] = "/nonexistent/airlock.sock"
    import spe.analysis as sa
    return len(sa.load("health"))
attempt("spe.analysis.load health", load_health)
"""


def test_an_aggregate_only_dataset_is_not_mounted_and_its_rows_cannot_be_read_from_inside(
    world, people, tmp_path, monkeypatch, sandbox_ready
):
    make_health(tmp_path, monkeypatch, persons=120)
    with transaction() as s:
        grant_dataset(s, get_user(s, "reviewer"), get_project(s, "study"), "people", ["income"])
    extract("study", "people")
    plan = admit_workspace("researcher", "study")
    assert set(plan.mounts) == {"people"}  # the spawner's decision: no mount for 'health'
    with readonly() as s:
        health_file = data_storage().path(
            current_extracts(s, get_project(s, "study"))["health"].path
        )
    assert health_file.is_file()  # the rows exist on the host, outside every workspace

    # A sandbox with exactly the plan's mounts, under a short state path (unix socket limit).
    base = Path(tempfile.mkdtemp(prefix="spe-dpr-"))
    state = base / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("SPE_STATE_DIR", str(state))
    reset_settings()
    box = Sandboxes(state)
    ws = box.workspace("study", "researcher", {})
    # The extracts, copied to where storage keeps them under this state folder (the pytest
    # folders above tmp_path are not searchable by a workspace user); mounts as planned.
    data = state / "data" / "projects" / "study" / "extracts"
    ws.datasets = {}
    for name, folder in plan.mounts.items():
        ws.datasets[name] = Path(shutil.copytree(folder, data / name / folder.name))
    health_copy = Path(shutil.copytree(health_file.parent, data / "health" / "v1"))
    health_file = health_copy / health_file.name
    try:
        report = box.run(
            ws,
            HUNT,
            {
                "health_file": str(health_file),
                "health_dir": str(health_file.parent),
                "env_dir": str(box.env_dir),
            },
            timeout=60,
        )
    finally:
        box.close()
        if os.geteuid() == 0:
            remove_workspace_user(layout.workspace_id("study", "researcher"))
        shutil.rmtree(base, ignore_errors=True)
    assert report["list data"] == {"ok": True, "value": ["people"]}
    assert report["read rows dataset"]["ok"] is True  # control: mounts work
    for name in (
        "read health mount",
        "read health on the host path",
        "list health folder on the host path",
    ):
        assert report[name]["ok"] is False, (name, report[name])
    assert report["find parquet files"] == {"ok": True, "value": ["/data/people/data.parquet"]}
    loaded = report["spe.analysis.load health"]
    assert loaded["ok"] is False and "'health'" in loaded["error"]
