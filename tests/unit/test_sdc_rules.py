"""Disclosure rules as data: the platform default, strictest-wins merging, validation errors."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from spe.sdc import Rules, SDCPolicyError, Verdict, holder_slug, load_rules, validate_policy_file

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"


def _rules_only(rules: Rules) -> Rules:
    return dataclasses.replace(rules, sources=(), origins={}, notes=())


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A copy of the platform default alone, to add overrides to."""
    sdc = tmp_path / "policies" / "sdc"
    (sdc / "holders").mkdir(parents=True)
    (sdc / "datasets").mkdir()
    shutil.copy(POLICIES / "sdc" / "default.yaml", sdc / "default.yaml")
    return tmp_path / "policies"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_platform_default_file_equals_the_built_in_rules() -> None:
    loaded = load_rules(POLICIES)
    assert _rules_only(loaded) == _rules_only(Rules())
    assert loaded.sources == ("policies/sdc/default.yaml",)
    assert loaded.threshold == 10
    assert (loaded.dominance_n, loaded.dominance_k, loaded.p_percent) == (2, 0.9, 10.0)
    assert loaded.residual_dof == 10
    assert loaded.zeros == Verdict.FAIL
    assert loaded.extremes == Verdict.FAIL


def test_every_shipped_policy_file_validates() -> None:
    files = sorted((POLICIES / "sdc").rglob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        validate_policy_file(path)


def test_policies_dir_may_be_the_sdc_folder_itself() -> None:
    assert _rules_only(load_rules(POLICIES / "sdc")) == _rules_only(Rules())


def test_holder_slug_names_the_holder_file() -> None:
    assert holder_slug("Demo Registry Agency") == "demo-registry-agency"
    assert holder_slug("Helse Sør-Øst RHF") == "helse-sor-ost-rhf"
    with pytest.raises(SDCPolicyError, match="no letters or digits"):
        holder_slug("—")


def test_holder_and_dataset_overrides_tighten_and_the_strictest_wins(policies: Path) -> None:
    _write(
        policies / "sdc" / "holders" / "tax-agency.yaml",
        "threshold: 20\ndominance:\n  n: 3\n  k: 0.8\nfull_cells: fail\n",
    )
    _write(
        policies / "sdc" / "datasets" / "income.yaml",
        "threshold: 15\ndominance:\n  k: 0.85\np_percent: 25\nresidual_dof: 30\n",
    )
    rules = load_rules(policies, holder="Tax Agency", dataset="income")
    assert rules.threshold == 20  # holder 20 beats dataset 15
    assert rules.dominance_n == 3
    assert rules.dominance_k == 0.8  # lower k is stricter: holder's 0.8 beats dataset's 0.85
    assert rules.p_percent == 25  # higher p is stricter
    assert rules.residual_dof == 30
    assert rules.full_cells == Verdict.FAIL  # review -> fail is stricter
    assert rules.sources == (
        "policies/sdc/default.yaml",
        "policies/sdc/holders/tax-agency.yaml",
        "policies/sdc/datasets/income.yaml",
    )
    assert rules.origins["threshold"] == "policies/sdc/holders/tax-agency.yaml"
    assert rules.origins["p_percent"] == "policies/sdc/datasets/income.yaml"
    # The dataset's threshold 15 is stricter than the default but not the holder's: a note says so.
    assert any("threshold 15 is weaker than 20" in note for note in rules.notes)


@pytest.mark.parametrize(
    ("text", "field", "kept", "line", "weaker"),
    [
        ("threshold: 5\n", "threshold", 10, 2, "threshold 5"),
        ("dominance:\n  k: 0.95\n", "dominance_k", 0.9, 3, "dominance k 0.95"),
        ("dominance:\n  n: 1\n", "dominance_n", 2, 3, "dominance n 1"),
        ("p_percent: 5\n", "p_percent", 10.0, 2, "p_percent 5"),
        ("residual_dof: 3\n", "residual_dof", 10, 2, "residual_dof 3"),
        ("zeros: pass\n", "zeros", Verdict.FAIL, 2, "zeros pass"),
        ("extremes: review\n", "extremes", Verdict.FAIL, 2, "extremes review"),
    ],
)
def test_a_researcher_policy_cannot_weaken_a_rule_and_the_report_says_where(
    policies: Path, tmp_path: Path, text: str, field: str, kept: object, line: int, weaker: str
) -> None:
    extra = _write(tmp_path / "mine.yaml", "description: my own rules\n" + text)
    rules = load_rules(policies, extra=extra)
    assert getattr(rules, field) == kept
    (note,) = rules.notes
    assert note.startswith(f"{extra}, line {line}: {weaker} is weaker than")
    assert "can only tighten" in note


def test_a_weaker_holder_override_is_ignored_too(policies: Path) -> None:
    _write(policies / "sdc" / "holders" / "lax-agency.yaml", "threshold: 3\n")
    rules = load_rules(policies, holder="Lax Agency")
    assert rules.threshold == 10
    assert "policies/sdc/holders/lax-agency.yaml, line 1: threshold 3" in rules.notes[0]


def test_a_researcher_policy_may_tighten(policies: Path, tmp_path: Path) -> None:
    extra = _write(tmp_path / "strict.yaml", "threshold: 25\np_percent: 20\n")
    rules = load_rules(policies, extra=extra)
    assert (rules.threshold, rules.p_percent) == (25, 20.0)
    assert rules.notes == ()


def test_missing_holder_or_dataset_files_mean_no_override(policies: Path) -> None:
    rules = load_rules(policies, holder="Nobody Agency", dataset="nothing")
    assert _rules_only(rules) == _rules_only(Rules())


def test_a_missing_platform_default_is_an_error_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "sdc").mkdir()
    with pytest.raises(SDCPolicyError, match=r"no platform default disclosure policy at .*default"):
        load_rules(tmp_path)


def test_a_researcher_policy_file_that_does_not_exist_is_an_error(
    policies: Path, tmp_path: Path
) -> None:
    with pytest.raises(SDCPolicyError, match="There is no disclosure policy at"):
        load_rules(policies, extra=tmp_path / "absent.yaml")


def test_a_dataset_name_with_a_path_in_it_is_refused(policies: Path) -> None:
    with pytest.raises(SDCPolicyError, match="not a dataset name"):
        load_rules(policies, dataset="../../etc/passwd")


@pytest.mark.parametrize(
    ("text", "line", "fix"),
    [
        (
            "threshold: 10\nthreshhold: 12\n",
            2,
            "unknown rule 'threshhold'; did you mean 'threshold'?",
        ),
        ("dominance:\n  n: 2\n  k: 90\n", 3, "such as 0.9 (not 90)"),
        ("threshold: ten\n", 1, "threshold is 'ten'; it must be a whole number"),
        ("threshold: 0\n", 1, "threshold is 0; it must be a whole number"),
        ("p_percent: 150\n", 1, "at most 100"),
        ("zeros: fial\n", 1, "use one of pass, review, fail; did you mean 'fail'?"),
        ("dominance:\n  m: 2\n", 2, "dominance takes n and k, not 'm'"),
        ("dominance: 0.9\n", 1, "dominance must be a mapping"),
        ("threshold: 10\nthreshold: 12\n", 2, "'threshold' is given twice"),
        ("threshold: [10\n", 2, "not valid YAML"),
        ("- threshold\n", 1, "the policy must be a mapping"),
    ],
)
def test_validation_errors_name_the_file_the_line_and_the_fix(
    tmp_path: Path, text: str, line: int, fix: str
) -> None:
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(SDCPolicyError) as caught:
        validate_policy_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, line {line}: "), message
    assert fix in message


def test_an_empty_policy_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.yaml", "# nothing\n")
    with pytest.raises(SDCPolicyError, match="empty; give at least one rule or delete it"):
        validate_policy_file(path)


def test_an_invalid_holder_file_stops_loading_with_its_line(policies: Path) -> None:
    _write(policies / "sdc" / "holders" / "bad-agency.yaml", "description: x\nthreshold: -4\n")
    with pytest.raises(SDCPolicyError, match=r"holders/bad-agency.yaml, line 2: threshold is -4"):
        load_rules(policies, holder="Bad Agency")


def test_rules_serialise_for_reports() -> None:
    out = Rules().to_dict()
    assert out["threshold"] == 10
    assert out["dominance"] == {"n": 2, "k": 0.9}
    assert out["zeros"] == "fail"
