"""The cumulative disclosure audit, attacked as a researcher who combines released tables.

Each attack is first shown to pass the old pairwise differencing (spe.sdc.differencing, which
only compares nested pairs of cells), then to fail the audit. Persons are generated with numpy;
their hashes stand for the holder-wide person space.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest

from spe.sdc.audit import (
    COUNT_SPACE,
    History,
    NewCell,
    ReleaseInfo,
    audit,
    sum_space,
)
from spe.sdc.differencing import PersonSets, ReleasedTable, find_differencing
from spe.sdc.rules import Verdict

THRESHOLD = 10
WAGE = sum_space("survey.wage")


def release(day: int, title: str, project: str = "alpha") -> ReleaseInfo:
    return ReleaseInfo(
        release_id=f"{project}-{day}",
        project=project,
        title=title,
        released_at=dt.datetime(2026, 11, day, 12, tzinfo=dt.UTC),
        output_name="table.csv",
    )


def persons_space(n: int, seed: int = 0) -> np.ndarray:
    """n distinct person hashes (random 64-bit values, as keyed hashes are)."""
    rng = np.random.default_rng(seed)
    return np.unique(rng.integers(-(2**63), 2**63 - 1, size=n * 2, dtype=np.int64))[:n]


def counts(sets: list[np.ndarray]) -> list[NewCell]:
    return [NewCell("count", np.sort(s)) for s in sets]


def old_pairwise_passes(new: list[np.ndarray], released: list[list[np.ndarray]]) -> bool:
    """What the pairwise differencing check said about the same tables."""
    tables = []
    for k, cells in enumerate(released):
        offsets = np.zeros(len(cells) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in cells], out=offsets[1:])
        labels = tuple((("cell", str(i)),) for i in range(len(cells)))
        tables.append(ReleasedTable(f"t{k}", labels, offsets, np.concatenate(cells)))
    offsets = np.zeros(len(new) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in new], out=offsets[1:])
    sets = PersonSets(
        [(("cell", str(i)),) for i in range(len(new))],
        ["cell"] * len(new),
        offsets,
        np.concatenate([np.sort(c) for c in new]),
    )
    return find_differencing(sets, tables, THRESHOLD) == []


def knows_no_numbers(sentence: str) -> bool:
    """Only the threshold and release dates may appear as numbers in a reason."""
    text = re.sub(r"\d{4}-\d{2}-\d{2}", "", sentence)
    text = text.replace(f"smaller than {THRESHOLD} persons", "")
    return not re.search(r"\d", text)


# -- attacks -------------------------------------------------------------------------------------
def test_three_sums_over_p_plus_t_q_and_p_union_q_give_one_persons_wage_and_fail() -> None:
    people = persons_space(60)
    p_set, t, q_set = people[:20], people[20:21], people[30:45]
    first, second = np.concatenate([p_set, t]), q_set
    new = np.concatenate([p_set, q_set])
    assert old_pairwise_passes([new], [[first], [second]])

    history = History.empty("holder", WAGE)
    history = history.extended(
        release(2, "Wage by county"), [NewCell("sum", np.sort(first), "survey.wage")]
    )
    history = history.extended(
        release(20, "Wage, ages ≤ 38"), [NewCell("sum", second, "survey.wage")]
    )
    result = audit(history, [NewCell("sum", np.sort(new), "survey.wage")], THRESHOLD)

    assert result.status == Verdict.FAIL
    (finding,) = [f for f in result.findings if f.verdict == Verdict.FAIL]
    assert finding.cell_index == 0
    assert finding.sentence == (
        "Together with 'Wage by county' (released 2026-11-02) and 'Wage, ages ≤ 38' (released "
        "2026-11-20), this table determines the total survey.wage of a group smaller than 10 "
        "persons."
    )


@pytest.fixture(scope="module")
def population() -> dict[str, np.ndarray]:
    """3,000 persons in three regions, ages 20-69; North has exactly one 39-year-old."""
    rng = np.random.default_rng(1)
    n = 3000
    region = rng.integers(0, 3, n)
    age = rng.integers(20, 70, n)
    north_39 = np.flatnonzero((region == 0) & (age == 39))
    age[north_39[1:]] = 38  # keep exactly one
    if not len(north_39):
        age[np.flatnonzero(region == 0)[0]] = 39
    return {"id": persons_space(n, seed=2), "region": region, "age": age}


def band_table(pop: dict[str, np.ndarray], mask: np.ndarray | None = None) -> list[np.ndarray]:
    mask = np.ones(len(pop["id"]), dtype=bool) if mask is None else mask
    return [
        pop["id"][mask & (pop["region"] == r) & (pop["age"] // 10 == b)]
        for r in range(3)
        for b in range(2, 7)
    ]


def region_table(pop: dict[str, np.ndarray], mask: np.ndarray) -> list[np.ndarray]:
    return [pop["id"][mask & (pop["region"] == r)] for r in range(3)]


def test_region_by_age_band_then_regions_for_ages_up_to_38_reveal_the_only_39_year_old(
    population: dict[str, np.ndarray],
) -> None:
    bands = band_table(population)
    young = region_table(population, population["age"] <= 38)
    assert min(len(c) for c in bands + young) >= THRESHOLD
    assert old_pairwise_passes(young, [bands])

    history = History.empty("holder").extended(
        release(2, "Persons by region and age band"), counts(bands)
    )
    result = audit(history, counts(young), THRESHOLD)

    assert 0 in result.failing_cells()  # North, where one person is 39
    finding = result.for_cell(0)[0]
    assert finding.verdict == Verdict.FAIL
    assert "'Persons by region and age band' (released 2026-11-02)" in finding.sentence
    assert knows_no_numbers(finding.sentence)


def test_the_age_band_attack_fails_across_two_projects_of_the_same_holder(
    population: dict[str, np.ndarray],
) -> None:
    bands = band_table(population)
    young = region_table(population, population["age"] <= 38)
    from_alpha = History.empty("holder").extended(
        release(2, "Persons by region and age band", project="alpha"), counts(bands)
    )
    only_beta = History.empty("holder")  # what a per-project check saw from project beta

    assert audit(only_beta, counts(young), THRESHOLD).passed
    result = audit(from_alpha, counts(young), THRESHOLD)
    assert result.status == Verdict.FAIL
    assert result.for_cell(0)[0].releases[0].project == "alpha"


def test_a_partition_then_a_nested_table_determining_a_group_of_three_fails() -> None:
    """Three persons of region 1 with no recorded sex, in three age bands: the region minus its
    women and men is those three, although no single one of them is determined."""
    rng = np.random.default_rng(3)
    n = 2000
    ids = persons_space(n, seed=4)
    region = rng.integers(0, 2, n)
    band = rng.integers(0, 4, n)
    sex = rng.integers(0, 2, n)
    unknown = np.flatnonzero(region == 0)[:0]
    for b in range(3):
        unknown = np.append(unknown, np.flatnonzero((region == 0) & (band == b))[0])
    sex[unknown] = 2
    by_region = [ids[region == r] for r in range(2)]
    by_band = [ids[band == b] for b in range(4)]
    by_region_sex = [ids[(region == r) & (sex == s)] for r in range(2) for s in range(2)]
    assert old_pairwise_passes(by_region_sex, [by_region, by_band])

    history = History.empty("holder")
    history = history.extended(release(2, "Persons by region"), counts(by_region))
    history = history.extended(release(3, "Persons by age band"), counts(by_band))
    merge = history.merge(by_region_sex)
    lonely = merge.refinement.atom_of[
        np.searchsorted(merge.refinement.persons, np.sort(ids[unknown]))
    ]
    assert len(set(lonely.tolist())) == 3  # three atoms of one person each ...
    assert not set(lonely.tolist()) & set(
        merge.basis.determined_columns().tolist()
    )  # ... none alone

    result = audit(history, counts(by_region_sex), THRESHOLD)
    assert result.status == Verdict.FAIL
    assert result.failing_cells() <= {0, 1}  # the region-1 cells
    sentence = result.findings[0].sentence
    assert "'Persons by region' (released 2026-11-02)" in sentence
    assert knows_no_numbers(sentence)


# -- what stays safe ---------------------------------------------------------------------------
def test_two_tables_on_disjoint_persons_pass() -> None:
    ids = persons_space(400, seed=5)
    first = [ids[:100], ids[100:200]]
    second = [ids[200:300], ids[300:400]]
    history = History.empty("holder").extended(release(2, "First"), counts(first))
    assert audit(history, counts(second), THRESHOLD).passed


def test_a_table_with_its_own_margins_passes(population: dict[str, np.ndarray]) -> None:
    cells = band_table(population)
    rows = [np.sort(np.concatenate(cells[r * 5 : r * 5 + 5])) for r in range(3)]
    columns = [np.sort(np.concatenate(cells[b::5])) for b in range(5)]
    total = [np.sort(np.concatenate(cells))]
    result = audit(History.empty("holder"), counts(cells + rows + columns + total), THRESHOLD)
    assert result.passed


def test_two_one_way_tables_with_small_crossings_pass(population: dict[str, np.ndarray]) -> None:
    """Region and age band separately: their crossings include small groups, none determined."""
    by_region = region_table(population, np.ones(len(population["id"]), dtype=bool))
    by_age = [population["id"][population["age"] == a] for a in range(20, 70)]
    assert min(len(c) for c in by_age) >= THRESHOLD
    history = History.empty("holder").extended(release(2, "Persons by region"), counts(by_region))
    result = audit(history, counts(by_age), THRESHOLD)
    assert result.figures["atoms"] > 100  # region x single year of age: many small groups
    assert result.passed


def test_releasing_the_same_table_again_passes(population: dict[str, np.ndarray]) -> None:
    bands = band_table(population)
    history = History.empty("holder").extended(release(2, "Bands"), counts(bands))
    assert audit(history, counts(bands), THRESHOLD).passed


# -- sums and the p % rule ------------------------------------------------------------------
def test_a_determined_total_dominated_by_one_person_fails_the_p_percent_rule() -> None:
    ids = persons_space(40, seed=6)
    p_set, q_set = ids[:20], ids[20:32]
    wages = dict(zip(ids.tolist(), [1.0] * 40, strict=True))
    wages[int(q_set[0])] = 1e6

    def contributions(variable: str, persons: np.ndarray) -> np.ndarray:
        assert variable == "survey.wage"
        return np.array([wages[int(x)] for x in persons])

    history = History.empty("holder", WAGE).extended(
        release(2, "Wage, all"),
        [NewCell("sum", np.sort(np.concatenate([p_set, q_set])), "survey.wage")],
    )
    new = [NewCell("sum", np.sort(p_set), "survey.wage")]
    assert old_pairwise_passes([p_set], [[np.sort(np.concatenate([p_set, q_set]))]])
    result = audit(history, new, THRESHOLD, 10, contributions=contributions)
    assert result.status == Verdict.FAIL
    assert result.findings[0].rule == "p_percent"

    wages[int(q_set[0])] = 1.0
    assert audit(history, new, THRESHOLD, 10, contributions=contributions).passed
    unchecked = audit(history, new, THRESHOLD, 10)
    assert unchecked.status == Verdict.REVIEW
    assert "a reviewer must look" in unchecked.findings[0].sentence


def test_the_values_cells_carry_decide_the_p_percent_rule_and_unknown_ones_go_to_review() -> None:
    """The export path's contributions (spe.sdc.audit.contributions_of): the earlier release's
    values from the holder's map, the new output's from its cells; a person whose values
    disagree, or whom no value is known for, sends a determined total to a reviewer."""
    from spe.sdc.audit import ValueMap, contributions_of

    ids = persons_space(40, seed=8)
    p_set, q_set = np.sort(ids[:20]), np.sort(ids[20:32])
    union = np.sort(np.concatenate([p_set, q_set]))
    wage = {int(x): 100.0 + i for i, x in enumerate(ids)}
    wage[int(q_set[0])] = 1e6  # q's total is one person's wage within p %
    first = NewCell("sum", union, "survey.wage", "all", np.array([wage[int(x)] for x in union]))
    history = History.empty("holder", WAGE).extended(release(2, "Wage, all"), [first])
    released = {WAGE: ValueMap.of_cells([first], WAGE)}
    new = [NewCell("sum", p_set, "survey.wage", "p", np.array([wage[int(x)] for x in p_set]))]
    result = audit(history, new, THRESHOLD, 10, contributions=contributions_of(released, new))
    assert result.status == Verdict.FAIL and result.findings[0].rule == "p_percent"
    assert "'Wage, all' (released 2026-11-02)" in result.findings[0].sentence

    # the same persons without the dominant wage pass
    even = NewCell("sum", union, "survey.wage", "all", np.full(len(union), 100.0))
    history = History.empty("holder", WAGE).extended(release(2, "Wage, all"), [first])
    flat = {WAGE: ValueMap.of_cells([even], WAGE)}
    new_even = [NewCell("sum", p_set, "survey.wage", "p", np.full(len(p_set), 100.0))]
    assert audit(
        history, new_even, THRESHOLD, 10, contributions=contributions_of(flat, new_even)
    ).passed

    # no value known for q's persons (a release the server did not compute): a reviewer
    unknown = audit(history, new_even, THRESHOLD, 10, contributions=contributions_of({}, new_even))
    assert unknown.status == Verdict.REVIEW and unknown.findings[0].rule == "review"

    # the new output says another value for a person of p than the history: not one number
    clash = np.full(len(p_set), 100.0)
    clash[0] = 5.0
    wrong = [NewCell("sum", p_set, "survey.wage", "p", clash)]
    look = contributions_of(flat, wrong)("survey.wage", p_set)
    assert np.isnan(look[0]) and (look[1:] == 100.0).all()


def test_counts_and_sums_are_separate_spaces() -> None:
    ids = persons_space(60, seed=7)
    p_set, t, q_set = ids[:20], ids[20:21], ids[30:45]
    history = History.empty("holder", COUNT_SPACE)
    history = history.extended(release(2, "A"), counts([np.concatenate([p_set, t]), q_set]))
    sums = [NewCell("sum", np.sort(np.concatenate([p_set, q_set])), "survey.wage")]
    assert audit(history, sums, THRESHOLD).passed  # a sum cell is not a count
    means = [NewCell("mean", np.sort(np.concatenate([p_set, q_set])), "survey.wage")]
    assert audit(history, means, THRESHOLD).status == Verdict.FAIL  # a mean carries its count


def test_the_stored_form_audits_the_same(population: dict[str, np.ndarray]) -> None:
    bands = band_table(population)
    young = region_table(population, population["age"] <= 38)
    history = History.empty("holder").extended(release(2, "Bands"), counts(bands))
    again = History.from_bytes(history.to_bytes())
    assert again.releases == history.releases
    first = audit(history, counts(young), THRESHOLD)
    second = audit(again, counts(young), THRESHOLD)
    assert [f.sentence for f in first.findings] == [f.sentence for f in second.findings]


# -- bounds from non-negativity --------------------------------------------------------------
def five_groups(sizes: tuple[int, ...] = (6, 2, 23, 23, 3)) -> list[np.ndarray]:
    """Groups A..E of persons (sizes given), as the atoms of the releases below."""
    ids = persons_space(sum(sizes), seed=9)
    edges = np.cumsum((0, *sizes))
    return [ids[edges[i] : edges[i + 1]] for i in range(len(sizes))]


def union(groups: list[np.ndarray], which: str) -> np.ndarray:
    return np.sort(np.concatenate([groups["ABCDE".index(g)] for g in which]))


def bounded_history(groups: list[np.ndarray], space: str = COUNT_SPACE) -> History:
    """D+E, A+C+D+E and A+B+E released on three days (26, 55 and 11 persons: all >= 10)."""
    kind, variable = ("count", None) if space == COUNT_SPACE else ("sum", space[4:])
    history = History.empty("holder", space)
    for day, (title, which) in enumerate(
        [("Persons in work", "DE"), ("Persons by county", "ACDE"), ("Persons on benefits", "ABE")],
        start=2,
    ):
        history = history.extended(
            release(day, title), [NewCell(kind, union(groups, which), variable)]
        )
    return history


def test_non_negativity_confines_a_small_group_that_no_combination_determines() -> None:
    """A researcher who knows D+E = 26, A+C+D+E = 55, A+B+E = 11 and now C+E = 26: no
    combination of the four fixes any group below 10 (the row space leaves one free direction,
    A+t, B-2t, C-t, D-t, E+t), but no group can be negative, so t lies in [-3, 1] and A (6
    persons) lies in [3, 7], B in [0, 8], E in [0, 4]: each is shown to be smaller than 10."""
    groups = five_groups()
    history = bounded_history(groups)
    new = counts([union(groups, "CE")])
    assert min(len(c.persons) for c in new) >= THRESHOLD

    result = audit(history, new, THRESHOLD)

    assert result.status == Verdict.FAIL
    assert {f.rule for f in result.findings} == {"count_bound"}  # no exact determination
    (finding,) = result.findings
    assert finding.sentence == (
        "Together with 'Persons in work' (released 2026-11-02), 'Persons by county' (released "
        "2026-11-03) and 'Persons on benefits' (released 2026-11-04), this table shows, since "
        "no count is negative, that a group has fewer than 10 persons."
    )
    assert knows_no_numbers(finding.sentence.replace("fewer than 10", ""))


def test_the_same_releases_pass_where_every_small_group_could_reach_the_threshold() -> None:
    """With B of 8 and E of 6, t lies in [-6, 4]: A and E may each hold 10 persons and B 20, so
    no group is shown to be small; the audit finds those integer points and passes."""
    groups = five_groups((6, 8, 23, 23, 6))
    assert audit(bounded_history(groups), counts([union(groups, "CE")]), THRESHOLD).passed


def test_a_total_bounded_by_non_negativity_fails_the_p_percent_rule() -> None:
    """The same releases as wage sums: A holds one large wage. The second-largest earner of A
    subtracts his own wage from the largest total of A the releases allow (B gives way at most
    half its total) and gets the largest wage within 10 %; with B's wages large, he cannot.
    Every released total passes the p % rule on its own (E's wages hide A's in A+B+E), and the
    first three releases alone leave A's total open far enough."""
    groups = five_groups()
    wages = {int(x): 1_000.0 for g in groups for x in g}
    wages[int(groups[0][0])] = 100_000.0
    wages.update({int(x): 5_000.0 for x in groups[4]})

    def contributions(variable: str, persons: np.ndarray) -> np.ndarray:
        assert variable == "survey.wage"
        return np.array([wages[int(x)] for x in persons])

    history = bounded_history(groups, WAGE)
    new = [NewCell("sum", union(groups, "CE"), "survey.wage")]
    result = audit(history, new, THRESHOLD, 10, contributions=contributions)
    assert result.status == Verdict.FAIL
    assert {f.rule for f in result.findings} == {"p_percent_bound"}
    assert result.findings[0].sentence.endswith(
        "bounds the total survey.wage of a group, since no value is negative, so closely that "
        "one person's value can be estimated within 10 %."
    )
    for x in groups[1]:
        wages[int(x)] = 50_000.0  # B's total lets A's grow by 50,000: more than 10 %
    assert audit(history, new, THRESHOLD, 10, contributions=contributions).passed


def test_bounds_not_computed_in_time_go_to_a_reviewer() -> None:
    groups = five_groups()
    result = audit(
        bounded_history(groups), counts([union(groups, "CE")]), THRESHOLD, bounds_seconds=0
    )
    assert result.status == Verdict.REVIEW
    assert {f.rule for f in result.findings} == {"bounds_limit"}
    assert "could not all be computed in the time allowed; a reviewer must look" in (
        result.findings[0].sentence
    )


def test_overlapping_ordinary_tables_with_small_crossings_pass(
    population: dict[str, np.ndarray],
) -> None:
    """Region x age band, then sex x single year of age: their crossings (region x sex x year)
    hold about ten persons each, many fewer, none confined below 10 by what was released."""
    rng = np.random.default_rng(8)
    sex = rng.integers(0, 2, len(population["id"]))
    by_sex_age = [
        population["id"][(sex == s) & (population["age"] == a)]
        for s in range(2)
        for a in range(20, 70)
    ]
    assert min(len(c) for c in by_sex_age) >= THRESHOLD
    history = History.empty("holder").extended(
        release(2, "Persons by region and age band"), counts(band_table(population))
    )
    result = audit(history, counts(by_sex_age), THRESHOLD)
    assert result.figures["atoms"] > 250
    assert result.passed, [f.sentence for f in result.findings]


def test_a_declared_largest_wage_narrows_the_bound_and_fails() -> None:
    """B's large wages leave A's total room to grow, but E's three wages lie just below the
    largest wage the dataset policy declares, so E (which grows with A) can hardly grow: an
    intruder who knows the declared maximum confines A's total again."""
    groups = five_groups()
    wages = {int(x): 1_000.0 for g in groups for x in g}
    wages[int(groups[0][0])] = 100_000.0
    wages.update({int(x): 50_000.0 for x in groups[1]})
    wages.update({int(x): 99_000.0 for x in groups[4]})

    def contributions(variable: str, persons: np.ndarray) -> np.ndarray:
        return np.array([wages[int(x)] for x in persons])

    history = bounded_history(groups, WAGE)
    new = [NewCell("sum", union(groups, "CE"), "survey.wage")]
    assert audit(history, new, THRESHOLD, 10, contributions=contributions).passed
    declared = audit(
        history,
        new,
        THRESHOLD,
        10,
        contributions=contributions,
        value_bounds={"survey.wage": 100_000.0},
    )
    assert {f.rule for f in declared.findings} == {"p_percent_bound"}


@pytest.mark.parametrize("ids", [["p1", "p1", "p2", "p2", "p3"], [7, 7, 9, 9, 11]])
def test_the_server_gives_each_persons_total_and_none_for_a_person_in_two_cells(
    ids: list[object],
) -> None:
    """spe.exports.checking.with_values on a checked table: p2's two rows in one cell are one
    contribution (their total); p1's rows in two cells are two contributions, so p1's value is
    unknown (NaN) rather than a wrong number; the hashes match the cells' persons."""
    from types import SimpleNamespace

    import pandas as pd

    from spe.exports.checking import with_values
    from spe.sdc.check import check_table

    frame = pd.DataFrame(
        {
            "person": ids,
            "region": ["a", "b", "a", "a", "b"],
            "kind": ["w"] * 5,
            "wage": [10.0, 20.0, 30.0, 5.0, 7.0],
        }
    )
    report = check_table(frame, "region", "kind", values="wage", agg="sum", person_id="person")
    sets = report.person_sets(include_margins=False)
    cells = [
        NewCell("sum", sets.persons[sets.offsets[i] : sets.offsets[i + 1]], "survey.wage")
        for i in range(report.n_cells)
    ]
    computed = SimpleNamespace(parts=[SimpleNamespace(report=report, release=True)])
    evidence = SimpleNamespace(frame=frame, datasets=["survey"])
    valued = with_values(cells, computed, evidence)
    by_cell = {}
    for i, cell in enumerate(valued):
        assert cell.values is not None
        by_cell[i] = sorted(cell.values.tolist(), key=lambda v: (not np.isnan(v), v))
    assert report.n_cells == 2
    a, b = by_cell[0], by_cell[1]  # region a: p1 (two cells) and p2; region b: p1 and p3
    assert np.isnan(a[0]) and a[1] == 35.0
    assert np.isnan(b[0]) and b[1] == 7.0
