"""The outbox record and the server-side replay: honest outputs pass, tampered ones fail."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import spe.analysis as sa
from spe.analysis import AnalysisError, OutputSpecError, check_output, check_plain_file
from spe.sdc import Rules, Verdict


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A workspace whose outbox is tmp_path/outbox; no policies (platform defaults)."""
    from spe.config import reset_settings

    for key in list(os.environ):
        if key.startswith("SPE_") and not key.startswith("SPE_TEST_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SPE_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("SPE_WORKSPACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SPE_POLICIES_DIR", str(tmp_path / "no-policies"))
    reset_settings()
    yield tmp_path / "outbox"
    reset_settings()


def people(n: int = 2000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    df = pd.DataFrame(
        {
            "person_id": [f"{v:032x}" for v in rng.integers(0, 2**62, n)],
            "sex": rng.choice(["F", "M"], n),
            "region": rng.choice(["East", "North", "South"], n),
            "age": age,
            "income": rng.lognormal(10, 0.5, n),
            "years": rng.exponential(6, n),
            "died": rng.integers(0, 2, n),
            "note": "not used",
        }
    )
    df["employed"] = (rng.random(n) < 0.2 + 0.008 * (age - 18)).astype(int)
    return sa.use(df, person_id="person_id", dataset="income")


def sidecar_of(outbox: Path, name: str) -> dict[str, Any]:
    return json.loads((outbox / f"{name}.spe.json").read_text())


def files_of(outbox: Path, name: str) -> dict[str, Path]:
    return {
        f"{name}.csv": outbox / f"{name}.csv",
        f"{name}.evidence.parquet": outbox / (f"{name}.evidence.parquet"),
    }


def replay(outbox: Path, name: str, rules: Rules | None = None, **kwargs: Any) -> Any:
    return check_output(
        sidecar_of(outbox, name), files_of(outbox, name), rules or Rules(), **kwargs
    )


def rehash(outbox: Path, name: str) -> None:
    """Make the sidecar's hashes fit edited files, as a careful tamperer would."""
    sidecar = sidecar_of(outbox, name)
    for key, file in (("file_sha256", "file"), ("evidence_sha256", "evidence")):
        sidecar[key] = hashlib.sha256((outbox / sidecar[file]).read_bytes()).hexdigest()
    (outbox / f"{name}.spe.json").write_text(json.dumps(sidecar))


# -- the record in the outbox --------------------------------------------------------------
def test_recording_writes_csv_evidence_and_a_complete_sidecar(workspace: Path) -> None:
    df = people()
    out = sa.crosstab(df, "sex", "region", name="by-region")
    assert sorted(p.name for p in workspace.iterdir()) == [
        "by-region.csv",
        "by-region.evidence.parquet",
        "by-region.spe.json",
    ]
    sidecar = sidecar_of(workspace, "by-region")
    assert set(sidecar) == {
        "spe_output",
        "name",
        "kind",
        "command",
        "file",
        "file_sha256",
        "evidence",
        "evidence_sha256",
        "spec",
        "datasets",
        "created",
        "report",
    }
    assert sidecar["spec"] == {
        "index": ["sex"],
        "columns": ["region"],
        "values": None,
        "agg": "count",
        "person_id": "person_id",
        "safe": None,
    }
    assert sidecar["datasets"] == ["income"] and sidecar["created"].endswith("+00:00")
    csv_bytes = (workspace / "by-region.csv").read_bytes()
    assert hashlib.sha256(csv_bytes).hexdigest() == sidecar["file_sha256"]
    assert csv_bytes.decode() == out.to_spe_csv()
    assert csv_bytes.decode().splitlines()[:2] == ["region,East,North,South", "sex,,,"]
    evidence = pq.read_table(workspace / "by-region.evidence.parquet").to_pandas()
    assert list(evidence.columns) == ["person_id", "sex", "region"]  # only what is used
    assert len(evidence) == len(df)
    assert "top_contributions" in sidecar["report"]["cells"][0]  # the workspace's evidence
    listed = sa.outbox()
    assert listed["name"].tolist() == ["by-region"] and listed["status"][0] == "pass"


def test_default_names_are_unique_and_safe(workspace: Path) -> None:
    df = people(300)
    first = sa.crosstab(df, "sex", "region")
    second = sa.crosstab(df, "sex", "region")
    assert first.name != second.name and first.name.startswith("crosstab-")
    assert len(list(workspace.glob("*.spe.json"))) == 2


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "with space", "", "x\\y"])
def test_path_like_output_names_are_refused_with_a_sentence(workspace: Path, name: str) -> None:
    with pytest.raises(AnalysisError, match="no folders in it"):
        sa.crosstab(people(300), "sex", "region", name=name)
    assert not workspace.exists() or not any(workspace.iterdir())


def test_record_false_writes_nothing(workspace: Path) -> None:
    sa.describe(people(300), ["age"], record=False)
    assert not workspace.exists() or not any(workspace.iterdir())


def test_an_interrupted_write_leaves_no_output_and_no_temporary_files(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spe.analysis.recording as recording

    df = people(300)
    real_replace = os.replace
    calls = {"n": 0}

    def dying_replace(src: Any, dst: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # after the CSV is in place, before the evidence and sidecar
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(recording.os, "replace", dying_replace)
    with pytest.raises(OSError, match="disk full"):
        sa.crosstab(df, "sex", "region", name="t1")
    assert not (workspace / "t1.spe.json").exists()  # no sidecar: not an output
    assert not list(workspace.glob(".*.tmp"))
    assert sa.outbox().empty


def test_overwriting_an_output_keeps_it_complete(workspace: Path) -> None:
    df = people()
    sa.crosstab(df, "sex", "region", name="t1")
    sa.crosstab(df, "region", "sex", name="t1")
    assert replay(workspace, "t1").status == Verdict.PASS
    assert sidecar_of(workspace, "t1")["spec"]["index"] == ["region"]


# -- honest outputs pass -------------------------------------------------------------------
HONEST: dict[str, Callable[[pd.DataFrame], Any]] = {
    "crosstab": lambda df: sa.crosstab(df, ["sex", "region"], "died", name="o"),
    "pivot_table": lambda df: sa.pivot_table(df, "age", "sex", "region", name="o"),
    "describe": lambda df: sa.describe(df, ["age", "income"], by="region", name="o"),
    "hist": lambda df: sa.hist(df, "age", bins=5, by="sex", name="o"),
    "ols": lambda df: sa.ols(df, "np.log(income) ~ age + C(region)", name="o"),
    "logit": lambda df: sa.logit(df, "employed ~ age", name="o"),
    "probit": lambda df: sa.probit(df, "employed ~ age + sex", name="o"),
    "survival": lambda df: sa.survival(df, "years", "died", intervals=[0, 4, 8, 16], name="o"),
}


@pytest.mark.parametrize("command", sorted(HONEST))
def test_replay_passes_an_honest_output(workspace: Path, command: str) -> None:
    out = HONEST[command](people())
    assert out.status == Verdict.PASS
    check = replay(workspace, "o")
    assert check.status == Verdict.PASS, check.reasons
    assert check.reasons == [] and check.checkable and check.datasets == ["income"]
    assert check.report["replay"]["file_matches"] is True
    assert check.kind == sa.outbox()["kind"][0]
    if command in ("ols", "logit", "probit"):
        assert check.released == [] and check.report["kind"] == "model"
    else:
        assert check.released and all(len(t) for t in check.released)


def test_replay_reports_the_same_failing_cells_as_the_workspace(workspace: Path) -> None:
    df = people()
    df.loc[df.index[:3], "region"] = "Island"
    out = sa.crosstab(df, "region", "sex", name="o")
    check = replay(workspace, "o")
    assert check.status == out.status == Verdict.FAIL
    assert any("region=Island" in r and "at least 10" in r for r in check.reasons)
    failing = [c for c in check.report["cells"] if c["status"] == "fail"]
    assert failing and all(c["index"] == ["Island"] for c in failing)
    assert "top_contributions" not in failing[0]  # individual values stay out of the verdict


# -- tampered outputs fail -----------------------------------------------------------------
def test_replay_fails_an_edited_csv_value(workspace: Path) -> None:
    sa.crosstab(people(), "sex", "region", name="o")
    path = workspace / "o.csv"
    lines = path.read_text().splitlines()
    cells = lines[2].split(",")
    cells[1] = str(int(cells[1]) + 1)
    lines[2] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    check = replay(workspace, "o")
    assert check.status == Verdict.FAIL
    assert any("changed after spe.analysis recorded it" in r for r in check.reasons)
    rehash(workspace, "o")
    check = replay(workspace, "o")
    assert check.status == Verdict.FAIL
    assert any(
        "does not match the table recomputed from its evidence" in r and "sex=F" in r
        for r in check.reasons
    )


def test_replay_fails_an_edited_sidecar_spec(workspace: Path) -> None:
    sa.crosstab(people(), "sex", "region", name="o")
    sidecar = sidecar_of(workspace, "o")
    sidecar["spec"]["index"], sidecar["spec"]["columns"] = ["region"], ["sex"]
    check = check_output(sidecar, files_of(workspace, "o"), Rules())
    assert check.status == Verdict.FAIL
    assert any("does not match" in r for r in check.reasons)


def test_replay_fails_evidence_with_a_small_cell_that_the_csv_hides(workspace: Path) -> None:
    df = people()
    df.loc[df.index[:3], "region"] = "Island"
    sa.crosstab(df, "sex", "region", name="o")
    # The researcher drops the small column from the file and fixes the hashes.
    path = workspace / "o.csv"
    rows = [line.split(",") for line in path.read_text().splitlines()]
    island = rows[0].index("Island")
    path.write_text("\n".join(",".join(r[:island] + r[island + 1 :]) for r in rows) + "\n")
    rehash(workspace, "o")
    check = replay(workspace, "o")
    assert check.status == Verdict.FAIL
    assert any("does not match" in r for r in check.reasons)
    assert any("region=Island" in r and "at least 10" in r for r in check.reasons)


def test_replay_fails_a_csv_that_does_not_parse(workspace: Path) -> None:
    sa.crosstab(people(), "sex", "region", name="o")
    (workspace / "o.csv").write_bytes(b'region,East,North\n"unclosed,1\nF,2\n')
    rehash(workspace, "o")
    check = replay(workspace, "o")
    assert check.status == Verdict.FAIL
    assert any("cannot be read as a CSV table" in r for r in check.reasons)
    (workspace / "o.csv").write_bytes(b"\xff\xfe\x00garbage")
    rehash(workspace, "o")
    assert any("not UTF-8" in r for r in replay(workspace, "o").reasons)


def test_replay_fails_evidence_with_extra_columns_or_empty_persons(workspace: Path) -> None:
    sa.crosstab(people(), "sex", "region", name="o")
    path = workspace / "o.evidence.parquet"
    evidence = pq.read_table(path).to_pandas()
    extra = evidence.assign(income=1.0)
    pq.write_table(pa.Table.from_pandas(extra, preserve_index=False), path)
    rehash(workspace, "o")
    assert any("needs exactly" in r for r in replay(workspace, "o").reasons)
    evidence.loc[0, "person_id"] = " "
    pq.write_table(pa.Table.from_pandas(evidence, preserve_index=False), path)
    rehash(workspace, "o")
    check = replay(workspace, "o")
    assert check.status == Verdict.FAIL and any("empty person" in r for r in check.reasons)


def test_replay_fails_evidence_whose_persons_are_not_the_projects(workspace: Path) -> None:
    df = people()
    sa.crosstab(df, "sex", "region", name="o")
    known = set(df["person_id"])
    assert replay(workspace, "o", known_persons=known).status == Verdict.PASS
    known.discard(df["person_id"].iloc[0])
    check = replay(workspace, "o", known_persons=known)
    assert check.status == Verdict.FAIL and "not persons of the project" in check.reasons[0]
    # The server asks its extracts which of the evidence's persons exist (known_persons as a
    # function): the same verdicts, without holding the whole project's persons.
    asked: list[list[str]] = []

    def lookup(wanted: list[str]) -> set[str]:
        asked.append(wanted)
        return {p for p in wanted if p in known}

    check = replay(workspace, "o", known_persons=lookup)
    assert check.status == Verdict.FAIL and "not persons of the project" in check.reasons[0]
    assert sorted(asked[0]) == sorted(set(df["person_id"]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"command": "delete_everything"}, "not an analysis command"),
        ({"kind": "model"}, "kind is 'model'"),
        ({"name": "../../etc/passwd"}, "no folders in it"),
        ({"file": "../o.csv"}, "file must be 'o.csv'"),
        ({"evidence": "/etc/shadow"}, "evidence must be"),
        ({"spe_output": 2}, "version 1"),
        ({"extra": 1}, "'extra' is not a sidecar key"),
        ({"file_sha256": "abc"}, "64 lower-case"),
        ({"created": "yesterday"}, "ISO 8601"),
        ({"spec": {"index": ["sex"]}}, "is missing"),
        (
            {
                "spec": {
                    "index": "sex",
                    "columns": ["region"],
                    "values": None,
                    "agg": "count",
                    "person_id": "person_id",
                    "safe": None,
                }
            },
            "must be a non-empty list",
        ),
        (
            {
                "spec": {
                    "index": ["sex"],
                    "columns": ["region"],
                    "values": None,
                    "agg": "count",
                    "person_id": "person_id",
                    "safe": "blur",
                }
            },
            "spec.safe",
        ),
        (
            {
                "spec": {
                    "index": ["sex"],
                    "columns": ["region"],
                    "values": None,
                    "agg": "count",
                    "person_id": "person_id",
                    "safe": None,
                    "x": 1,
                }
            },
            "not a setting",
        ),
    ],
)
def test_replay_refuses_an_invalid_sidecar_with_a_sentence(
    workspace: Path, change: dict[str, Any], message: str
) -> None:
    sa.crosstab(people(300), "sex", "region", name="o")
    sidecar = {**sidecar_of(workspace, "o"), **change}
    with pytest.raises(OutputSpecError, match=message):
        check_output(sidecar, files_of(workspace, "o"), Rules())


def test_replay_refuses_a_sidecar_whose_files_are_not_in_the_request(workspace: Path) -> None:
    sa.crosstab(people(300), "sex", "region", name="o")
    with pytest.raises(OutputSpecError, match="not among the request's files"):
        check_output(sidecar_of(workspace, "o"), {"o.csv": workspace / "o.csv"}, Rules())


def test_replay_never_runs_code_from_a_tampered_formula(workspace: Path, tmp_path: Path) -> None:
    sa.ols(people(), "income ~ age", name="o")
    target = tmp_path / "pwned"
    sidecar = sidecar_of(workspace, "o")
    sidecar["spec"]["formula"] = f"income ~ age + I(open({str(target)!r}, 'w'))"
    check = check_output(sidecar, files_of(workspace, "o"), Rules())
    assert check.status == Verdict.FAIL and "cannot be used" in check.reasons[0]
    assert not target.exists()


def test_replay_fails_a_tampered_survival_value(workspace: Path) -> None:
    sa.survival(people(), "years", "died", intervals=[0, 4, 8, 16], name="o")
    path = workspace / "o.csv"
    path.write_text(path.read_text().replace("0.", "0.9", 1))
    rehash(workspace, "o")
    check = replay(workspace, "o")
    assert check.status == Verdict.FAIL and any("does not match" in r for r in check.reasons)


# -- the server's rules, not the workspace's -----------------------------------------------
def test_replay_uses_the_servers_rules_not_the_workspaces(workspace: Path) -> None:
    out = sa.crosstab(people(), "sex", "region", name="o")
    assert out.status == Verdict.PASS
    assert sidecar_of(workspace, "o")["report"]["status"] == "pass"
    check = replay(workspace, "o", Rules(threshold=500))
    assert check.status == Verdict.FAIL
    assert any("at least 500" in r for r in check.reasons)
    assert check.report["rules"]["threshold"] == 500


def test_describe_replay_checks_published_statistics_with_the_servers_rules(
    workspace: Path,
) -> None:
    sa.describe(people(), ["age"], by="sex", name="o")  # integer ages: min and max published
    assert replay(workspace, "o").status == Verdict.PASS
    check = replay(workspace, "o", Rules(threshold=200))  # fewer hold age 18 than that
    assert check.status == Verdict.FAIL
    assert any(
        r.startswith("sex=F, variable=age, statistic=min: The minimum is the value of only")
        for r in check.reasons
    )


def test_replay_detects_differencing_against_a_released_table(workspace: Path) -> None:
    df = people()
    sa.crosstab(df, "region", "sex", name="first")
    first = replay(workspace, "first")
    assert first.status == Verdict.PASS and first.released
    # The same table without four persons: subtracting the two isolates them.
    sa.crosstab(df.iloc[4:], "region", "sex", name="second")
    assert replay(workspace, "second").status == Verdict.PASS  # alone it is fine
    check = replay(workspace, "second", released=first.released)
    assert check.status == Verdict.FAIL
    assert any("isolates" in r for r in check.reasons)
    assert check.report["differencing"]


def test_output_without_person_column_needs_a_reviewer(workspace: Path) -> None:
    df = people()
    df.attrs.clear()
    sa.crosstab(df.drop(columns="person_id"), "sex", "region", name="o")
    check = replay(workspace, "o")
    assert check.status == Verdict.REVIEW
    assert any("without a person column" in r for r in check.reasons)


# -- safe versions -------------------------------------------------------------------------
def small_cell_people() -> pd.DataFrame:
    df = people(3000)
    island = df.index[(df.sex == "F")][:3]
    df.loc[island, "region"] = "Island"
    df.loc[df.index[(df.sex == "M")][:40], "region"] = "Island"
    return df


def test_safe_version_replays_to_pass(workspace: Path) -> None:
    out = sa.crosstab(small_cell_people(), "sex", "region", name="o")
    assert out.status == Verdict.FAIL
    safe = out.safe()
    assert safe.name == "o-safe" and safe.status == Verdict.PASS
    assert np.isnan(safe.table.loc["F", "Island"])
    rows = list(csv.reader((workspace / "o-safe.csv").read_text().splitlines()))
    assert rows[0] == ["region", "East", "Island", "North", "South", "Total"]
    female = next(r for r in rows if r[0] == "F")
    assert female[2] == ""  # a suppressed cell is an empty field
    assert rows[-1][0] == "Total" and rows[-1][2] == "43"  # margins are published
    check = replay(workspace, "o-safe")
    assert check.status == Verdict.PASS, check.reasons
    assert replay(workspace, "o").status == Verdict.FAIL
    # Only the published cells are stored for differencing.
    released_labels = {label for t in check.released for label in t.labels}
    assert (("sex", "F"), ("region", "Island")) not in released_labels


def test_record_safe_records_the_safe_version_and_rounding_replays(workspace: Path) -> None:
    out = sa.crosstab(small_cell_people(), "sex", "region", name="r", record_safe="round")
    assert out.spec["safe"] == "round"
    check = replay(workspace, "r")
    assert check.status == Verdict.PASS, check.reasons
    values = pd.read_csv(workspace / "r.csv", skiprows=[1], index_col=0)
    assert (values.to_numpy() % 5 == 0).all()


def test_safe_version_of_a_one_column_table_does_not_repeat_hidden_cells(
    workspace: Path,
) -> None:
    df = people()
    df.loc[df.index[:3], "age"] = 95
    out = sa.hist(df, "age", bins=[18, 40, 60, 80, 100], name="h")
    assert out.status == Verdict.FAIL
    safe = out.safe()
    assert list(safe.table.columns) == ["count"]  # no Total column echoing each cell
    assert np.isnan(safe.table.loc["[80, 100]", "count"])
    assert replay(workspace, "h-safe").status == Verdict.PASS


def test_safe_describe_leaves_out_failing_statistics_and_replays(workspace: Path) -> None:
    df = people(3000)
    df.loc[df.index[:5], "region"] = "Island"
    out = sa.describe(df, ["income"], by="region", name="d")
    assert out.status == Verdict.FAIL
    safe = out.safe()
    assert safe.table.loc[("Island", "income")].isna().all()
    assert safe.status == Verdict.PASS
    assert replay(workspace, "d-safe").status == Verdict.PASS


def test_models_and_life_tables_have_no_automatic_safe_version(workspace: Path) -> None:
    out = sa.ols(people(8), "income ~ age", record=False)
    assert out.status == Verdict.FAIL
    with pytest.raises(AnalysisError, match="no automatic safe version"):
        out.safe()


# -- files the rules cannot read -----------------------------------------------------------
def test_plain_files_go_to_a_reviewer(tmp_path: Path) -> None:
    path = tmp_path / "figure.png"
    path.write_bytes(b"\x89PNG...")
    check = check_plain_file("figure.png", path)
    assert check.status == Verdict.REVIEW and not check.checkable and check.kind == "file"
    assert "rules cannot read" in check.reasons[0] and "reviewer" in check.reasons[0]
    with pytest.raises(AnalysisError):
        check_plain_file("../figure.png", path)


def test_outputs_of_a_filtered_frame_replay(workspace: Path) -> None:
    df = people()
    subset = df[df["age"] > 30]
    subset = pd.concat([subset, subset.iloc[:0]])  # keeps gaps in the index
    sa.hist(subset, "income", bins=4, by="sex", name="o")
    check = replay(workspace, "o")
    assert check.report["replay"]["file_matches"] is True


def test_replay_turns_hostile_evidence_into_a_verdict(workspace: Path) -> None:
    sa.hist(people(), "age", bins=[18, 50, 80], name="o")
    path = workspace / "o.evidence.parquet"
    evidence = pq.read_table(path).to_pandas()
    evidence["age"] = evidence["age"].astype(str).replace("[18, 50)", "[0, 1)")
    pq.write_table(pa.Table.from_pandas(evidence, preserve_index=False), path)
    rehash(workspace, "o")
    check = replay(workspace, "o")
    assert check.status == Verdict.FAIL and "cannot be recomputed" in check.reasons[0]
