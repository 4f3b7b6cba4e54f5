"""Issue 13's attacks from where the attacker stands: code in a real bubblewrap sandbox of the
demo project, with the project's extracts mounted read-only, writing to its own outbox and
filing through its own airlock socket (the real airlock, the real export check). None of the
attacks ends released without a reviewer:

- made-up evidence (the project's real pseudonyms, invented incomes) for a table that passes
  its own check;
- raw rows, compressed and base64-encoded, as the row labels of a table;
- a person's wage in the decimals of a histogram's bin edges;
- the same two smuggled into plans instead, which are refused at filing with a sentence.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spe.accounts.service import get_user
from spe.config import get_settings
from spe.db import readonly, transaction
from spe.exports import actions
from spe.projects.service import get_project
from spe.tasks import run_inline
from spe.workspaces import layout
from spe.workspaces.layout import host_paths
from spe.workspaces.registry import workspace_started
from spe.workspaces.sandbox import SandboxSpec
from spe.workspaces.sandbox_run import SandboxLimits, start_sandbox, workspace_user
from tests.integration.test_airlock import AirlockThread

RESEARCHER = "demo-researcher"
LIMITS = SandboxLimits(memory_mb=1024, pids_max=128, cpus=1.0)

# Runs inside the sandbox, as researcher code would: everything it writes and says is the
# attacker's. It prints one JSON line: what the airlock answered to each filing.
ATTACK = r"""
import base64, io, json, zlib
import pandas as pd
import pyarrow.parquet as pq
import spe.analysis as sa
from spe.workspaces.client import AirlockUnavailable, export

out = {}
def file(name, why):
    try:
        out[name] = export({name: why}, title="Attack " + name)
    except AirlockUnavailable as exc:
        out[name] = {"refused": str(exc)}

income = pq.read_table("/data/income/data.parquet").to_pandas()
population = pq.read_table("/data/population/data.parquet").to_pandas()

# 1. Made-up evidence: real pseudonyms, invented values; one "person's exact income".
pids = list(dict.fromkeys(income["person_id"]))[:40]
fake = pd.DataFrame({"person_id": pids, "group": ["a"] * 20 + ["b"] * 20,
                     "kind": ["wage"] * 40, "wage": [100000.0] * 39 + [987654.0]})
fake = sa.use(fake, person_id="person_id", dataset="income")
sa.crosstab(fake, "group", "kind", values="wage", aggfunc="mean", name="fabricated")
file("fabricated.csv", "Mean wage by group")

# 2. Rows of the extract in the row labels.
blob = base64.b64encode(zlib.compress(population.head(300).to_csv().encode())).decode()
chunks = [blob[i:i + 100] for i in range(0, len(blob), 100)]
labels = pd.DataFrame({"person_id": [f"p{i}" for i in range(len(chunks) * 12)],
                       "label": chunks * 12, "all": ["n"] * (len(chunks) * 12)})
sa.crosstab(sa.use(labels, person_id="person_id"), "label", "all", name="labels")
file("labels.csv", "Counts by label")

# 3. A pseudonym's wage in the decimals of bin edges.
secret = float(income["wage_income"].iloc[0]) + 0.123
frame = sa.use(income, person_id="person_id", dataset="income")
sa.hist(frame, "wage_income", bins=[0, secret, 5e6], name="edges")
file("edges.csv", "Wage histogram")

# 4. The same in plans: a label the researcher made, an edge off the grid.
catalogue = json.load(open("/data/income/catalogue.json"))
version = catalogue["version"]
scan = {"op": "scan", "dataset": "income", "version": version, "columns": None}
hist = {"command": "hist", "column": "wage_income", "edges": [0, secret, 5e6], "by": [],
        "safe": None}
plan = {"spe_plan": 1, "project": catalogue["project"], "frame": scan, "output": hist}
open("/home/researcher/outbox/plan_edges.plan.json", "w").write(json.dumps(plan))
file("plan_edges.plan.json", "Wage histogram")
print(json.dumps(out))
"""


@pytest.fixture
def demo_workspace(
    sandbox_ready: None, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """The demo project on 3,000 generated persons (SQLite: the attacks do not depend on the
    database), its researcher's workspace registered as running, and the real airlock
    listening on the workspace's socket. The state is not under pytest's temporary folder:
    pytest chmods that, which resets the ACLs that let the sandbox's user reach its folders,
    and its long paths do not fit a unix socket's address."""
    from spe.demo import PROJECT, publish_demo_data, set_up_demo
    from spe.dp.service import row_mounts
    from spe.projects.extracts import workspace_mounts
    from tests.conftest import _clear_spe_env, _reset_spe

    tmp = Path(tempfile.mkdtemp(prefix="spe-attack-"))
    state = tmp / "var"
    shutil.copytree(sqlite_template, state)
    os.chmod(state / "keys" / "platform.key", 0o600)
    _clear_spe_env(monkeypatch)
    monkeypatch.setenv("SPE_STATE_DIR", str(state))
    _reset_spe()
    set_up_demo()
    publish_demo_data(persons=3000)
    with transaction() as s:
        project = get_project(s, PROJECT)
        workspace_started(s, get_user(s, RESEARCHER), project)
        mounts = row_mounts(s, project, workspace_mounts(s, project))
    paths = host_paths(PROJECT, RESEARCHER)
    paths.outbox.mkdir(parents=True, exist_ok=True)
    config = tmp / "workspace-config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text("{}")
    service = AirlockThread().start()
    deadline = time.monotonic() + 10
    while not paths.airlock_socket.exists():
        assert time.monotonic() < deadline, "the airlock did not open the socket"
        time.sleep(0.05)
    try:
        yield {"project": PROJECT, "paths": paths, "mounts": mounts, "config": config}
    finally:
        service.stop()
        _reset_spe()
        shutil.rmtree(tmp, ignore_errors=True)


def _run_in_sandbox(ws: dict[str, Any], code: str) -> dict[str, Any]:
    paths = ws["paths"]
    env_dir = Path(get_settings().workspace_env_dir).resolve()
    uid = gid = None
    if os.geteuid() == 0:
        uid, gid = workspace_user(layout.workspace_id(ws["project"], RESEARCHER))
    spec = SandboxSpec(
        workspace_id=layout.workspace_id(ws["project"], RESEARCHER),
        home=paths.home,
        datasets=ws["mounts"],
        run_dir=paths.run,
        airlock_dir=paths.airlock,
        config_dir=ws["config"],
        env_dir=env_dir,
        command=[str(env_dir / "bin" / "python"), "-c", code],
        uid=uid,
        gid=gid,
    )
    process = start_sandbox(spec, LIMITS, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def _run_pending_checks() -> None:
    """What the worker does with the jobs the airlock queued."""
    from sqlalchemy import select

    from spe.jobs.models import Job

    with readonly() as s:
        pending = [
            str(j.id)
            for j in s.scalars(
                select(Job).where(Job.kind == "export_check", Job.status == "queued")
            )
        ]
    for job in pending:
        run_inline(job)


def test_attacks_from_inside_a_sandbox_never_leave_without_a_reviewer(demo_workspace):
    answers = _run_in_sandbox(demo_workspace, ATTACK)
    # The plan with a wage in its bin edge is refused at filing, with a sentence; nothing queued.
    refused = answers["plan_edges.plan.json"]
    assert "refused" in refused and "grid" in refused["refused"], refused
    filed = {name: a["request"] for name, a in answers.items() if "request" in a}
    assert set(filed) == {"fabricated.csv", "labels.csv", "edges.csv"}, answers
    _run_pending_checks()
    with transaction() as s:
        researcher = get_user(s, RESEARCHER)
        for name, rid in filed.items():
            view = actions.detail(s, researcher, actions.get_request(s, rid))
            assert view["status"] == "in_review", (name, view["status"])
            assert not view["auto_released"]
            output = view["outputs"][0]
            assert output["computed_by"] == "workspace"
            assert "could not recompute" in output["notice"]
