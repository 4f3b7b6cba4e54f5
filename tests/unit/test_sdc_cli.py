"""The `spe sdc` CLI contract (used by CI and external checks): JSON with the overall status
and, per cell, labels, value, person count and failing rules; exit 0 pass, 9 fail."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spe.cli", "sdc", *args], capture_output=True, text=True, timeout=120
    )


def test_crosstab_json_names_the_small_cell_and_exits_9(tmp_path):
    rows = [(f"p{i}", "big", "M") for i in range(40)] + [(f"q{i}", "small", "F") for i in range(3)]
    rows += [(f"r{i}", "big", "F") for i in range(30)] + [
        (f"s{i}", "small", "M") for i in range(20)
    ]
    # Person q0 appears four times: rows are not persons.
    rows += [("q0", "small", "F")] * 10
    data = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=["pid", "group", "sex"]).to_csv(data, index=False)
    out = _run(
        "crosstab",
        "--data",
        str(data),
        "--index",
        "group",
        "--columns",
        "sex",
        "--person-id",
        "pid",
        "--json",
    )
    assert out.returncode == 9, out.stderr
    report = json.loads(out.stdout)
    assert report["status"] == "fail"
    cells = {(tuple(c["index"]), tuple(c["columns"])): c for c in report["cells"]}
    small = cells[(("small",), ("F",))]
    assert small["persons"] == 3 and small["value"] == 13
    assert [r["rule"] for r in small["failing"]] == ["threshold"]
    assert cells[(("big",), ("M",))]["failing"] == []


def test_model_with_enough_residual_dof_passes(tmp_path):
    data = tmp_path / "m.csv"
    pd.DataFrame({"y": range(50), "x": [i % 7 for i in range(50)]}).to_csv(data, index=False)
    out = _run("model", "--data", str(data), "--formula", "y ~ x", "--kind", "ols", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "pass"


def test_bad_input_is_one_sentence(tmp_path):
    data = tmp_path / "x.csv"
    data.write_text("a,b\n1,2\n")
    out = _run("crosstab", "--data", str(data), "--index", "a", "--columns", "nope")
    assert out.returncode not in (0, 9, 10)
    assert "Traceback" not in out.stderr and "nope" in out.stderr
