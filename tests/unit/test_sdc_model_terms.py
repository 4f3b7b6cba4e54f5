"""Models whose every term rests on enough persons (issue 14, point 3), attacked as a researcher.

The residual degrees of freedom alone pass a regression with a dummy for each of 40 persons when
200 more persons fill the reference level: each coefficient plus the intercept is then one
person's exact wage. Each test shows what the attacker gets without the rule, then that the
check fails the model with a reason per term that names the term, never a value.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from spe.analysis.outputs import compute
from spe.sdc import Rules, Verdict, check_formula
from spe.sdc.check import check_model

COUNTY = "C(county, Treatment('other'))"


def _people(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "pid": [f"p{i:05d}" for i in range(n)],
            "wage": np.round(rng.lognormal(np.log(450_000), 0.3, n)),
            "hours": np.round(rng.normal(37.5, 3, n), 1),
            "age": rng.integers(20, 67, n),
            "sex": rng.choice(["F", "M"], n),
            "region": rng.choice(["North", "South", "East", "West"], n),
        }
    )


def _per_person_dummies() -> pd.DataFrame:
    """40 persons each alone in a county, 200 persons in the reference county 'other'."""
    df = _people(240, seed=40)
    df["county"] = ["other"] * 200 + [f"k{i:02d}" for i in range(40)]
    return df


def test_per_person_dummy_regression_gives_forty_exact_wages_and_fails_per_term() -> None:
    df = _per_person_dummies()
    report = check_formula(df, f"wage ~ {COUNTY}", "ols", person_id="pid")
    # The attack: the residual degrees of freedom (199) would let this pass, and intercept plus
    # a county's coefficient is the wage of the one person in it.
    dof = next(o for o in report.outcomes if o.rule == "residual_dof")
    assert dof.verdict == Verdict.PASS and report.df_resid == 199
    coef = {name: row["estimate"] for name, row in (report.coefficients or {}).items()}
    recovered = [coef["Intercept"] + coef[f"{COUNTY}[T.k{i:02d}]"] for i in range(40)]
    wages = df["wage"].to_numpy()[200:]
    assert np.allclose(recovered, wages, rtol=1e-9, atol=1e-6)
    # The rule: one failing reason per term, naming the term and its persons.
    assert report.status == Verdict.FAIL
    terms = [o for o in report.failing if o.rule == "term_persons"]
    assert len(terms) == 40
    assert terms[0].sentence == (
        f"The term {COUNTY}[T.k00] rests on 1 person; at least 10 are needed: merge levels or "
        "drop the term."
    )
    assert {o.numbers["persons"] for o in terms} == {1}
    # The design itself fits those 40 persons exactly.
    (leverage,) = [o for o in report.outcomes if o.rule == "leverage"]
    assert leverage.verdict == Verdict.FAIL and leverage.numbers["persons_fitted_exactly"] == 40
    # Reasons name terms, never a wage.
    text = json.dumps(report.to_dict()["failing"])
    assert not any(f"{w:g}" in text or str(int(w)) in text for w in wages)


def test_the_per_person_dummy_attack_fails_through_the_servers_compute_too() -> None:
    df = _per_person_dummies()
    spec = {"formula": f"wage ~ {COUNTY}", "columns": ["wage", "county"], "person_id": "pid"}
    computed = compute("ols", df[["pid", "wage", "county"]], spec, Rules())
    assert computed.status() == Verdict.FAIL
    reasons = computed.reasons()
    assert sum("rests on 1 person;" in r for r in reasons) == 40


def test_a_saturated_design_fails_on_residual_dof_and_on_every_term() -> None:
    df = _people(18, seed=3)
    df["county"] = [f"k{i % 9:02d}" for i in range(18)]  # 9 counties of 2 persons: 9 dof
    report = check_formula(df, "wage ~ C(county)", "ols", person_id="pid")
    rules = {o.rule for o in report.failing}
    assert rules == {"residual_dof", "term_persons", "leverage"}
    terms = [o for o in report.failing if o.rule == "term_persons"]
    # 8 coefficients and the reference county k00, inside the intercept.
    assert len(terms) == 9
    assert (
        "The level C(county)[k00] (a reference level, inside the intercept) rests on 2 persons"
        in (terms[0].sentence)
    )


def test_a_small_reference_level_fails_although_its_dummy_has_no_coefficient() -> None:
    df = _people(600, seed=5)
    df["county"] = ["a"] * 3 + ["b"] * 300 + ["c"] * 297
    report = check_formula(df, "wage ~ hours + C(county)", "ols", person_id="pid")
    failing = [o for o in report.failing if o.rule == "term_persons"]
    assert [o.numbers["term"] for o in failing] == ["C(county)[a]"]
    assert failing[0].numbers["reference"] is True


def test_an_interaction_cell_with_few_persons_fails_and_names_the_cell() -> None:
    df = _people(800, seed=7)
    df["sector"] = np.where(np.arange(800) % 2 == 0, "public", "private")
    # Women in the North in the public sector: only 4 persons.
    cell = (df["region"] == "North") & (df["sex"] == "F") & (df["sector"] == "public")
    df = pd.concat([df[~cell], df[cell].head(4)], ignore_index=True)
    formula = "wage ~ C(sex) * C(region) * C(sector)"
    report = check_formula(df, formula, "ols", person_id="pid")
    failing = [o for o in report.failing if o.rule == "term_persons"]
    assert [o.numbers["term"] for o in failing] == ["C(sex)[F]:C(region)[North]:C(sector)[public]"]
    assert failing[0].numbers["persons"] == 4 and failing[0].numbers["kind"] == "cell"
    assert "rests on 4 persons; at least 10 are needed" in failing[0].sentence
    # Without that interaction every margin rests on hundreds of persons and the model passes.
    main = check_formula(df, "wage ~ C(sex) + C(region) + C(sector)", "ols", person_id="pid")
    assert main.status == Verdict.PASS


def test_a_continuous_regressor_non_zero_for_one_person_fails() -> None:
    df = _people(500, seed=9)
    bonus = np.zeros(500)
    bonus[17] = 1.0  # one person's regressor: its coefficient is that person's residual
    df["bonus"] = bonus
    report = check_formula(df, "wage ~ hours + bonus", "ols", person_id="pid")
    # What it gives away: the fit passes through the one person exactly.
    fitted = report.coefficients or {}
    c = {k: v["estimate"] for k, v in fitted.items()}
    one = df.iloc[17]
    assert c["Intercept"] + c["hours"] * one["hours"] + c["bonus"] == pytest.approx(one["wage"])
    failing = [o for o in report.failing if o.rule == "term_persons"]
    assert [o.numbers["term"] for o in failing] == ["bonus"]
    assert "The term bonus rests on 1 person (the others all have its most common value)" in (
        failing[0].sentence
    )
    # A shift does not hide it: constant 7 for everyone but one person is the same design.
    df["bonus"] = 7.0 + bonus
    shifted = check_formula(df, "wage ~ hours + bonus", "ols", person_id="pid")
    assert [o.numbers["term"] for o in shifted.failing if o.rule == "term_persons"] == ["bonus"]


def test_two_regressors_that_differ_for_one_person_fail_on_leverage() -> None:
    """x1 and x2 each vary for everyone, but x1 - x2 is non-zero for one person: every term
    rests on 500 persons, yet the design singles that person out."""
    df = _people(500, seed=11)
    rng = np.random.default_rng(11)
    df["x2"] = rng.normal(size=500)
    df["x1"] = df["x2"]
    df.loc[42, "x1"] += 1.0
    report = check_formula(df, "wage ~ x1 + x2", "ols", person_id="pid")
    assert not [o for o in report.failing if o.rule == "term_persons"]
    (leverage,) = [o for o in report.failing if o.rule == "leverage"]
    assert leverage.verdict == Verdict.FAIL
    assert leverage.numbers["persons_fitted_exactly"] == 1


def test_a_normal_model_passes_every_rule() -> None:
    df = _people(2000, seed=13)
    report = check_formula(
        df, "np.log(wage) ~ hours + age + C(sex) * C(region)", "ols", person_id="pid"
    )
    assert report.status == Verdict.PASS, [o.sentence for o in report.failing]
    rules = [o.rule for o in report.outcomes]
    assert rules.count("residual_dof") == 1 and rules.count("leverage") == 1
    # Each coefficient but the intercept, and the reference levels and cells, has its outcome.
    names = {o.numbers["term"] for o in report.outcomes if o.rule == "term_persons"}
    assert {"hours", "age", "C(sex)[T.M]", "C(sex)[F]", "C(region)[East]"} <= names
    assert "C(sex)[T.M]:C(region)[T.West]" in names and "C(sex)[F]:C(region)[North]" in names


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", ["logit", "probit"])
def test_logit_and_probit_terms_rest_on_persons_too(kind: str) -> None:
    df = _people(400, seed=17)
    df["county"] = ["other"] * 380 + [f"k{i}" for i in range(20)]
    df["employed"] = (np.random.default_rng(17).random(400) < 0.6).astype(int)
    report = check_formula(df, f"employed ~ hours + {COUNTY}", kind, person_id="pid")
    failing = [o for o in report.failing if o.rule == "term_persons"]
    assert len(failing) == 20


def test_several_rows_of_one_person_count_once() -> None:
    df = _people(300, seed=19)
    df["county"] = "other"
    # Twelve rows of one county, all of three persons: 12 rows, 3 persons.
    df.loc[:11, "county"] = "k1"
    df.loc[:11, "pid"] = ["p00000", "p00001", "p00002"] * 4
    report = check_formula(df, f"wage ~ {COUNTY}", "ols", person_id="pid")
    (term,) = [o for o in report.failing if o.rule == "term_persons"]
    assert term.numbers["persons"] == 3


def test_a_stricter_threshold_applies_to_terms() -> None:
    df = _people(600, seed=21)
    df["county"] = ["a"] * 15 + ["b"] * 585
    ok = check_formula(df, "wage ~ C(county)", "ols", person_id="pid")
    assert ok.status == Verdict.PASS
    strict = check_formula(df, "wage ~ C(county)", "ols", Rules(threshold=20), person_id="pid")
    assert [o.numbers["term"] for o in strict.failing if o.rule == "term_persons"] == [
        "C(county)[a]"
    ]


def test_check_model_without_terms_keeps_its_residual_dof_rule() -> None:
    report = check_model("ols", 40, 35, persons=40)
    assert [o.rule for o in report.outcomes] == ["residual_dof"]
