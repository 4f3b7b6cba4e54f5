"""The audit's history in the database (SQLite and PostgreSQL): releases of two projects of one
holder are recorded, loaded together, and a table combining with the other project's release
fails; the compact history equals one rebuilt from the recorded cells."""

from __future__ import annotations

import datetime as dt
import re
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import func, select

from spe.audit.models import AuditEvent
from spe.db import readonly, transaction
from spe.sdc.audit import History, NewCell, ReleaseInfo, audit
from spe.sdc.audit.models import SDCHistorySnapshot, SDCRelease, SDCReleaseCells
from spe.sdc.audit.store import _rebuild, load_history, record_release
from spe.sdc.rules import Verdict


def _population() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    n = 3000
    region = rng.integers(0, 3, n)
    age = rng.integers(20, 70, n)
    north_39 = np.flatnonzero((region == 0) & (age == 39))
    age[north_39[1:]] = 38
    ids = np.unique(rng.integers(-(2**62), 2**62, size=2 * n, dtype=np.int64))[:n]
    return {"id": ids, "region": region, "age": age}


def _release(project: str, day: int, title: str) -> ReleaseInfo:
    return ReleaseInfo(
        f"{project}-{day}", project, title, dt.datetime(2026, 11, day, tzinfo=dt.UTC), "t.csv"
    )


def test_releases_of_two_projects_are_audited_together(spe_env: dict[str, str]) -> None:
    pop = _population()
    bands = [
        NewCell("count", pop["id"][(pop["region"] == r) & (pop["age"] // 10 == b)])
        for r in range(3)
        for b in range(2, 7)
    ]
    wages = [NewCell("mean", pop["id"][pop["region"] == r], "survey.wage") for r in range(3)]
    young = [
        NewCell("count", pop["id"][(pop["region"] == r) & (pop["age"] <= 38)]) for r in range(3)
    ]
    with transaction() as s:
        assert record_release(s, "statistics-norway", _release("alpha", 2, "By age band"), bands)
    with transaction() as s:
        assert record_release(s, "statistics-norway", _release("beta", 5, "Mean wage"), wages)
        # a task that runs twice records once
        assert not record_release(s, "statistics-norway", _release("beta", 5, "Mean wage"), wages)
    with transaction() as s:  # another holder's releases are not this holder's history
        record_release(s, "other-holder", _release("gamma", 6, "Other"), young)

    with readonly() as s:
        counts = load_history(s, "statistics-norway")
        sums = load_history(s, "statistics-norway", variable="survey.wage")
        assert [r.title for r in counts.releases] == ["By age band", "Mean wage"]
        assert [r.title for r in sums.releases] == ["Mean wage"]
        rebuilt = _rebuild(s, "statistics-norway", "count")
        assert rebuilt.to_bytes() == counts.to_bytes()
        snapshots = s.scalars(select(SDCHistorySnapshot.n_releases)).all()
        assert sorted(snapshots) == [1, 1, 2]
        assert s.scalar(select(func.count()).select_from(SDCRelease)) == 3
        assert s.scalar(select(func.count()).select_from(SDCReleaseCells)) == 4  # mean: 2 spaces
        events = s.scalars(
            select(AuditEvent.project).where(AuditEvent.action == "sdc.release_record")
        ).all()
        assert sorted(events) == ["alpha", "beta", "gamma"]

    result = audit(counts, young, 10)  # project gamma's table, had it been this holder's
    assert result.status == Verdict.FAIL
    finding = result.for_cell(0)[0]
    assert "'By age band' (released 2026-11-02)" in finding.sentence
    assert audit(History.empty("statistics-norway"), young, 10).passed


@pytest.mark.parametrize("backend", ["sqlite"])  # the database only stores the history here
def test_releases_that_confine_a_small_group_through_non_negativity_fail_the_export_check(
    spe_env: dict[str, str],
) -> None:
    """Three releases of two projects (D+E, A+C+D+E, A+B+E: 26, 55 and 11 persons) and a new
    table C+E (26): no combination fixes a group below 10, but no count is negative, so A (6
    persons) lies in [3, 7]. The export check's audit (spe.exports.auditing.audit, on the
    recorded history) fails the table and names the releases, never a count."""
    from spe.exports.auditing import audit as export_audit

    ids = np.unique(np.random.default_rng(5).integers(-(2**62), 2**62, size=200))[:57]
    edges = np.cumsum([0, 6, 2, 23, 23, 3])
    group = {g: ids[edges[i] : edges[i + 1]] for i, g in enumerate("ABCDE")}

    def cell(which: str) -> NewCell:
        return NewCell("count", np.sort(np.concatenate([group[g] for g in which])))

    for project, day, title, which in [
        ("alpha", 2, "Persons in work", "DE"),
        ("beta", 3, "Persons by county", "ACDE"),
        ("alpha", 4, "Persons on benefits", "ABE"),
    ]:
        with transaction() as s:
            record_release(s, "statistics-norway", _release(project, day, title), [cell(which)])

    rules = SimpleNamespace(threshold=10, p_percent=10.0)
    result = export_audit("statistics-norway", "req-9", "beta", "New", [cell("CE")], [], rules)
    assert result.status == Verdict.FAIL
    assert {f.rule for f in result.findings} == {"count_bound"}
    sentence = result.findings[0].sentence
    assert "'Persons in work' (released 2026-11-02)" in sentence
    assert "'Persons on benefits' (released 2026-11-04)" in sentence
    assert "fewer than 10 persons" in sentence
    assert not re.search(r"\d", re.sub(r"\d{4}-\d{2}-\d{2}|fewer than 10", "", sentence))
    other = export_audit("other-holder", "req-9", "beta", "New", [cell("CE")], [], rules)
    assert other.passed


def test_released_values_are_kept_sealed_and_read_back_for_the_p_percent_rule(
    spe_env: dict[str, str],
) -> None:
    """What each person contributed to a released sum is stored only sealed (no value's bytes
    in any row), is read back through the holder's value map, is rebuilt from the releases'
    sealed rows when the map is missing, and disagreeing contributions become unknown."""
    from spe.audit import record
    from spe.sdc.audit import load_value_maps, sum_space
    from spe.sdc.audit.models import SDCReleaseValues, SDCValueMap
    from spe.sdc.audit.store import _rebuild_values

    pop = _population()
    ids = np.sort(pop["id"][:40])
    wage = np.round(np.linspace(31_000.5, 97_000.25, 40), 2)
    first = [NewCell("sum", ids[:30], "survey.wage", "a", wage[:30])]
    later = [
        NewCell(
            "sum", ids[20:40], "survey.wage", "b", np.concatenate([wage[20:29], [1.5], wage[30:]])
        )
    ]
    with transaction() as s:
        record_release(s, "statistics-norway", _release("alpha", 2, "Wages"), first)
    with transaction() as s:
        record_release(s, "statistics-norway", _release("beta", 3, "Wages again"), later)
    space = sum_space("survey.wage")
    with readonly() as s:
        stored = [*s.scalars(select(SDCReleaseValues.data)), *s.scalars(select(SDCValueMap.data))]
        assert len(stored) == 3
        for blob in stored:
            assert wage[:30].tobytes() not in blob and wage[5:6].tobytes() not in blob
        (values,) = load_value_maps(s, "statistics-norway", later).values()
        rebuilt = _rebuild_values(s, "statistics-norway", space)
    found, known = values.lookup(ids)
    assert known.all()
    assert np.array_equal(found[:29], wage[:29]) and np.array_equal(found[30:], wage[30:])
    assert np.isnan(found[29])  # two releases gave person 29 two values: not one number
    assert np.array_equal(rebuilt.persons, values.persons)
    assert np.array_equal(rebuilt.values, values.values, equal_nan=True)
    with transaction() as s:  # a map that fell behind is rebuilt from the sealed releases
        s.delete(s.get(SDCValueMap, ("statistics-norway", space)))
        record(s, "test:operator", "sdc.value_map_drop", "statistics-norway", {})
    with readonly() as s:
        (again,) = load_value_maps(s, "statistics-norway", later).values()
    assert np.array_equal(again.values, values.values, equal_nan=True)
