"""Positions that are no one's value (issue 14, point 4), attacked as a researcher.

A median of 11 persons passes the threshold rule; picked around one person (five known to earn
less, five known to earn more) it is that person's exact wage. A median is released only where
at least the threshold number of persons lie within the policy's tolerance of it; a policy may
also round every released median to its grid, and the check then says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spe.analysis.outputs import compute
from spe.sdc import Rules, SDCPolicyError, Verdict, check_table, load_rules, safe_version
from spe.sdc.compute import round_significant

TARGET_WAGE = 437_512.0
REPO = Path(__file__).resolve().parents[2]


def _picked_group() -> pd.DataFrame:
    """Eleven persons: five earn well below the target, five well above; nobody near."""
    wages = [210e3, 255e3, 290e3, 330e3, 365e3, TARGET_WAGE, 520e3, 590e3, 660e3, 740e3, 830e3]
    return pd.DataFrame(
        {"pid": [f"p{i}" for i in range(11)], "group": "picked", "all": "all", "wage": wages}
    )


def _dense_group(n: int = 300, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "pid": [f"d{i}" for i in range(n)],
            "group": "dense",
            "all": "all",
            "wage": np.round(rng.lognormal(np.log(450_000), 0.3, n)),
        }
    )


def test_a_median_of_a_hand_picked_group_of_eleven_is_one_persons_wage_and_fails() -> None:
    df = _picked_group()
    report = check_table(df, "group", "all", values="wage", agg="median", person_id="pid")
    cell = report.cell(0)
    # The attack: 11 persons pass the threshold, and the median is the target's exact wage.
    assert cell.persons == 11
    assert cell.value == TARGET_WAGE
    assert "threshold" not in {o.rule for o in cell.failing}
    # The rule: nobody else lies within 10 % of it, so it is one person's value.
    assert report.status == Verdict.FAIL
    (position,) = cell.failing
    assert position.rule == "position"
    assert position.numbers == {
        "near": 1,
        "threshold": 10,
        "tolerance": 0.1,
        "rounded_to_digits": None,
    }
    assert position.sentence.startswith(
        "Only 1 person has a value within 10 % of the median; at least 10 are needed"
    )
    assert str(int(TARGET_WAGE)) not in position.sentence


def test_a_median_of_a_dense_group_passes_and_is_released_as_computed() -> None:
    df = _dense_group()
    report = check_table(df, "group", "all", values="wage", agg="median", person_id="pid")
    assert report.status == Verdict.PASS
    cell = report.cell(0)
    assert cell.value == df["wage"].median()
    position = next(o for o in cell.outcomes if o.rule == "position")
    assert position.numbers["near"] >= 10
    assert "no one's value in particular" in position.sentence


def test_persons_near_the_median_are_counted_once_whatever_their_rows() -> None:
    # Nine persons near the median, one of them with five rows: still nine persons (of 13).
    wages = [100.0, 101.0, 99.0, 100.5, 99.5, 100.2, 99.8, 100.1, 99.9] + [100.0] * 4
    wages += [10.0, 20.0, 500.0, 600.0]
    pids = [f"p{i}" for i in range(9)] + ["p0"] * 4 + ["f1", "f2", "f3", "f4"]
    df = pd.DataFrame({"pid": pids, "group": "g", "all": "all", "wage": wages})
    report = check_table(df, "group", "all", values="wage", agg="median", person_id="pid")
    (position,) = report.cell(0).failing
    assert report.cell(0).persons == 13 and position.numbers["near"] == 9


def test_a_median_of_zero_counts_the_persons_at_zero() -> None:
    wages = [0.0] * 10 + [5.0, 9.0, 12.0]
    df = pd.DataFrame(
        {"pid": [f"p{i}" for i in range(13)], "group": "g", "all": "all", "wage": wages}
    )
    report = check_table(df, "group", "all", values="wage", agg="median", person_id="pid")
    assert report.status == Verdict.PASS
    df.loc[0, "wage"] = 0.001  # nine at zero: the median 0 is now too few persons' value
    report = check_table(df, "group", "all", values="wage", agg="median", person_id="pid")
    assert [o.rule for o in report.cell(0).failing] == ["position"]


def test_the_tolerance_comes_from_the_rules() -> None:
    df = _dense_group(60, seed=4)
    wide = check_table(df, "group", "all", values="wage", agg="median", person_id="pid")
    narrow = check_table(
        df,
        "group",
        "all",
        values="wage",
        agg="median",
        person_id="pid",
        rules=Rules(position_tolerance=0.001),
    )
    assert wide.status == Verdict.PASS
    assert narrow.status == Verdict.FAIL
    assert narrow.cell(0).failing[0].numbers["tolerance"] == 0.001


def test_a_grid_policy_publishes_the_rounded_median_and_says_so() -> None:
    df = _dense_group()
    rules = dataclasses.replace(Rules(), position_rounding="grid", position_digits=2)
    report = check_table(
        df, "group", "all", values="wage", agg="median", person_id="pid", rules=rules
    )
    exact = float(df["wage"].median())
    assert report.cell(0).value == float(f"{exact:.2g}") != exact
    assert report.table.iloc[0, 0] == float(f"{exact:.2g}")
    position = next(o for o in report.cell(0).outcomes if o.rule == "position")
    assert position.numbers["rounded_to_digits"] == 2
    assert position.sentence.endswith(
        "The median is published rounded to 2 significant digits (the policy's grid)."
    )
    # Rounding hides digits; it does not make the hand-picked median pass.
    picked = check_table(
        _picked_group(), "group", "all", values="wage", agg="median", person_id="pid", rules=rules
    )
    assert picked.status == Verdict.FAIL


def test_round_significant_rounds_to_the_grid_and_keeps_zero_and_missing() -> None:
    out = round_significant(np.array([52_345.6, -0.012345, 0.0, np.nan, 99_999.0]), 2)
    assert out[:3].tolist() == [52_000.0, -0.012, 0.0]
    assert np.isnan(out[3]) and out[4] == 100_000.0


def test_a_policy_may_round_medians_but_may_not_widen_the_tolerance(tmp_path: Path) -> None:
    sdc = tmp_path / "sdc"
    (sdc / "datasets").mkdir(parents=True)
    (sdc / "default.yaml").write_text((REPO / "policies/sdc/default.yaml").read_text())
    (sdc / "datasets" / "income.yaml").write_text(
        "position_rounding: grid\nposition_digits: 3\nposition_tolerance: 0.5\n"
    )
    rules = load_rules(sdc, dataset="income")
    assert rules.position_rounding == "grid"
    assert rules.position_digits == 2  # more digits would be weaker
    assert rules.position_tolerance == 0.1  # a wider window would be weaker
    assert len(rules.notes) == 2
    (sdc / "datasets" / "bad.yaml").write_text("position_rounding: sometimes\n")
    with pytest.raises(SDCPolicyError, match="position_rounding is 'sometimes'; use none"):
        load_rules(sdc, dataset="bad")


def test_a_table_of_medians_fails_its_isolated_cell_and_the_safe_version_hides_it() -> None:
    second = _dense_group(200, seed=2).assign(group="dense2")
    df = pd.concat([_picked_group(), _dense_group(), second], ignore_index=True)
    report = check_table(df, "group", "all", values="wage", agg="median", person_id="pid")
    failing = {c.index[0]: [o.rule for o in c.failing] for c in report.failing_cells()}
    assert failing == {"picked": ["position"]}
    safe = safe_version(report, "suppress")
    assert safe.status != Verdict.FAIL
    assert TARGET_WAGE not in pd.to_numeric(safe.table.stack(), errors="coerce").tolist()


def test_describe_leaves_out_a_median_no_one_else_is_near() -> None:
    df = pd.concat([_picked_group(), _dense_group()], ignore_index=True)
    spec = {"columns": ["wage"], "by": ["group"], "person_id": "pid"}
    computed = compute("describe", df[["pid", "group", "wage"]], spec, Rules())
    median = list(computed.table.columns).index("median")
    rows = [label[0] for label in computed.table.index]
    withheld = computed.withheld_in_workspace()
    assert withheld[rows.index("picked"), median]
    assert not withheld[rows.index("dense"), median]
    assert computed.status(withheld) != Verdict.FAIL
    assert "too few persons near it" in computed.notes[0]
