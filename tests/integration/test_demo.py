"""`spe demo --no-start` (what `make demo` runs before starting) sets up every role, prints
one-time logins once, and can run again (printing fresh passwords)."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def _demo(state):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
    env["SPE_STATE_DIR"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "spe.cli", "demo", "--no-start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_prints_a_login_for_every_role_and_reruns(tmp_path):
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stderr
    logins = dict(re.findall(r"^  (demo-[a-z0-9-]+)\s+(\S{16})\s", first.stdout, re.M))
    assert set(logins) == {
        "demo-operator",
        "demo-holder",
        "demo-reviewer2",
        "demo-researcher",
        "demo-admin",
        "demo-auditor",
    }
    second = _demo(tmp_path)
    assert second.returncode == 0, second.stderr
    again = dict(re.findall(r"^  (demo-[a-z0-9-]+)\s+(\S{16})\s", second.stdout, re.M))
    assert set(again) == set(logins)
    assert all(again[u] != logins[u] for u in logins)  # one-time: new ones each run
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
    env["SPE_STATE_DIR"] = str(tmp_path)
    verify = subprocess.run(
        [sys.executable, "-m", "spe.cli", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and verify.stdout.startswith("OK:")
