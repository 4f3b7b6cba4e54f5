"""Sums across releases, attacked through the real export path (issue 14, point 1): a researcher
files plan outputs whose sums each pass alone, and whose differences give away one person's
wage, exactly (a group below the threshold) or within p % (a group of zero wages and one earner,
whose total the earner's colleague with the second largest wage can read as the earner's).

The server computes each plan output on the extract, so it knows what every person contributed
to a sum; the cumulative audit reads those values (and those of earlier releases, from their
sealed store) and refuses the output that completes the attack, naming the earlier releases by
title and date, never a number. Two overlapping sums that determine nobody's value still leave.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from spe.accounts.service import get_user
from spe.config import reset_settings
from spe.db import readonly, transaction
from spe.exports import actions
from spe.exports.actions import OutputRequest
from spe.projects.service import get_project
from spe.tasks import run_inline

RESEARCHER = "demo-researcher"
YEAR = 2021


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """SQLite only, as test_plan_exports.py (plans are evaluated by DuckDB on the extract; the
    history's store runs on both databases in test_sdc_history.py)."""
    return str(request.param)


@pytest.fixture
def ws(spe_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from spe.demo import PROJECT, publish_demo_data, set_up_demo
    from spe.projects.extracts import plan_catalogue, workspace_mounts

    set_up_demo()
    publish_demo_data(persons=3000)
    with readonly() as s:
        project = get_project(s, PROJECT)
        mounts = workspace_mounts(s, project)
        outbox = actions.default_outbox(project, RESEARCHER)
        catalogue = plan_catalogue(s, project)
    data = tmp_path / "data"
    data.mkdir()
    for name, folder in mounts.items():
        (data / name).symlink_to(folder, target_is_directory=True)
    outbox.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("SPE_WORKSPACE_DATA_DIR", str(data))
    monkeypatch.setenv("SPE_OUTBOX_DIR", str(outbox))
    reset_settings()
    versions = {name: src.version for name, src in catalogue.sources.items()}
    return {"project": PROJECT, "outbox": outbox, "versions": versions, "data": data}


def extract(ws: dict[str, Any]) -> pd.DataFrame:
    """The year's wages with sex and county, read from the extract as the researcher can."""
    income = pq.read_table(ws["data"] / "income" / "data.parquet").to_pandas()
    population = pq.read_table(ws["data"] / "population" / "data.parquet").to_pandas()
    year = income[income["year"] == YEAR]
    rows = year.merge(population, on="person_id")
    return rows[rows["municipality"].notna()][["person_id", "wage_income", "sex", "municipality"]]


# -- plans as the workspace writes them ---------------------------------------------------------
def wages_by_sex(ws: dict[str, Any], where: dict[str, Any] | None) -> dict[str, Any]:
    """Sum of wages in YEAR by sex, over the persons ``where`` keeps."""
    joined = {
        "op": "join",
        "left": {
            "op": "scan",
            "dataset": "income",
            "version": ws["versions"]["income"],
            "columns": ["year", "wage_income"],
        },
        "right": {
            "op": "scan",
            "dataset": "population",
            "version": ws["versions"]["population"],
            "columns": ["sex", "municipality"],
        },
        "how": "inner",
    }
    # Persons without a county are left out: a comparison with a missing county is neither
    # true nor false in SQL, so "not in county C" would drop them from one table and not from
    # another, and the audit would (rightly) fail on them instead of on the attack.
    condition: dict[str, Any] = both(
        {"fn": "eq", "args": [{"col": "year"}, {"lit": YEAR}]},
        negate({"fn": "is_null", "args": [{"col": "municipality"}]}),
    )
    if where is not None:
        condition = {"fn": "and", "args": [condition, where]}
    kept = {"op": "filter", "input": joined, "where": condition}
    # one column: the decade the year falls in (a grid bin), as a declared year would list
    # every income year, empty but YEAR
    frame = {
        "op": "derive",
        "input": kept,
        "columns": {"decade": {"bin": {"col": "year"}, "width": 10}},
    }
    return {
        "spe_plan": 1,
        "project": ws["project"],
        "frame": frame,
        "output": {
            "command": "crosstab",
            "index": ["sex"],
            "columns": ["decade"],
            "values": "wage_income",
            "agg": "sum",
            "safe": None,
        },
    }


def county(code: str) -> dict[str, Any]:
    return {"fn": "eq", "args": [{"col": "municipality"}, {"lit": code}]}


def both(*conditions: dict[str, Any]) -> dict[str, Any]:
    return {"fn": "and", "args": list(conditions)}


def either(*conditions: dict[str, Any]) -> dict[str, Any]:
    return {"fn": "or", "args": list(conditions)}


def negate(condition: dict[str, Any]) -> dict[str, Any]:
    return {"fn": "not", "args": [condition]}


def file_plan(ws: dict[str, Any], name: str, document: dict[str, Any], title: str) -> str:
    path = ws["outbox"] / f"{name}.plan.json"
    path.write_text(json.dumps(document), "utf-8")
    with transaction() as s:
        request, job = actions.file_request(
            s,
            get_user(s, RESEARCHER),
            get_project(s, ws["project"]),
            [OutputRequest(path.name, f"{name} for the paper")],
            title,
        )
        rid = str(request.id)
    run_inline(job)
    return rid


def seen(rid: str) -> dict[str, Any]:
    with transaction() as s:
        return actions.detail(s, get_user(s, RESEARCHER), actions.get_request(s, rid))


def released_alone(rid: str) -> bool:
    view = seen(rid)
    return bool(view["status"] == "released" and view["auto_released"])


def names_only_releases(reason: str) -> bool:
    """A reason may name titles, dates, the threshold and p; no count, no value."""
    text = re.sub(r"\d{4}-\d{2}-\d{2}", "", reason)
    text = re.sub(r"smaller than \d+ persons|within \d+ %", "", text)
    return not re.search(r"\d", text)


# -- the groups the attacker picks from public categories and the extract ------------------------
def one_earner_among_zeros(rows: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """A county and sex whose persons without wages, with its best paid person, make a group of
    at least the threshold whose total is that one person's wage: (filter, the group's rows)."""
    for (code, sex), group in rows.groupby(["municipality", "sex"], observed=True):
        zeros = group[group["wage_income"] == 0]
        top = group["wage_income"].max()
        if len(zeros) >= 12 and top > 0 and (group["wage_income"] == top).sum() == 1:
            where = both(
                county(str(code)),
                {"fn": "eq", "args": [{"col": "sex"}, {"lit": str(sex)}]},
                either(
                    {"fn": "eq", "args": [{"col": "wage_income"}, {"lit": 0}]},
                    {"fn": "ge", "args": [{"col": "wage_income"}, {"lit": int(top)}]},
                ),
            )
            chosen = group[(group["wage_income"] == 0) | (group["wage_income"] >= top)]
            return where, chosen
    raise AssertionError("the demo data has no county and sex with an earner among zeros")


def first_release_day(rid: str) -> str:
    """The date the audit's history gives the release (what a reason may name)."""
    from sqlalchemy import select

    from spe.sdc.audit.models import SDCRelease

    with readonly() as s:
        row = s.scalars(select(SDCRelease).where(SDCRelease.release_id == rid)).first()
        assert row is not None, "the release was not recorded for the audit"
        return row.released_at.date().isoformat()


# -- the tests -----------------------------------------------------------------------------------
def test_a_sum_over_p_after_a_sum_over_p_and_t_is_not_released_and_names_the_first(ws):
    """The brief's attack: sum of wages over P and t, then over P; t is one person."""
    rows = extract(ws)
    _, group = one_earner_among_zeros(rows)
    earner = group[group["wage_income"] > 0]
    assert len(earner) == 1
    code, sex, wage = (earner.iloc[0][k] for k in ("municipality", "sex", "wage_income"))
    t = both(
        county(str(code)),
        {"fn": "eq", "args": [{"col": "sex"}, {"lit": str(sex)}]},
        {"fn": "ge", "args": [{"col": "wage_income"}, {"lit": int(wage)}]},
    )
    first = file_plan(ws, "everyone", wages_by_sex(ws, None), "Wages by sex")
    assert released_alone(first), seen(first)["outputs"][0]["reasons"]
    second = file_plan(ws, "all_but_t", wages_by_sex(ws, negate(t)), "Wages by sex, again")
    view = seen(second)
    assert not released_alone(second)
    reasons = view["outputs"][0]["reasons"]
    day = first_release_day(first)
    assert any(f"'Wages by sex' (released {day})" in r for r in reasons), reasons
    assert all(names_only_releases(r) for r in reasons), reasons
    assert str(int(wage)) not in json.dumps(view)


def test_a_group_of_zero_wages_and_one_earner_fails_the_p_percent_rule_across_releases(ws):
    """T has at least the threshold's persons, so no small group is determined; but its total is
    one person's wage, which the second largest contributor (a zero) reads within p %. Without
    the values the audit could only ask a reviewer; with them it fails, naming the first."""
    rows = extract(ws)
    where, group = one_earner_among_zeros(rows)
    assert len(group) >= 10
    first = file_plan(ws, "everyone", wages_by_sex(ws, None), "Wages by sex")
    assert released_alone(first), seen(first)["outputs"][0]["reasons"]
    second = file_plan(ws, "all_but_t", wages_by_sex(ws, negate(where)), "Wages again")
    view = seen(second)
    output = view["outputs"][0]
    assert not released_alone(second) and output["check_status"] == "fail", output["reasons"]
    day = first_release_day(first)
    (reason,) = [r for r in output["reasons"] if "Together with" in r]
    assert "'Wages by sex" in reason and day in reason, reason
    assert re.search(r"one person.s value can be estimated within \d+ %", reason), reason
    assert names_only_releases(reason), reason
    top = int(group["wage_income"].max())
    assert str(top) not in json.dumps(view) and str(top) not in json.dumps(seen(first))


def test_three_sums_over_p_and_t_over_q_and_over_p_and_q_fail_naming_both(ws):
    """Issue 14's three-table sum: P and T, then Q, then P and Q; T = (1) + (2) - (3)."""
    rows = extract(ws)
    where, group = one_earner_among_zeros(rows)
    sizes = rows.groupby("municipality", observed=True)["person_id"].nunique()
    other = sizes.drop(group.iloc[0].municipality).idxmax()  # both sexes, many persons
    q = county(str(other))
    first = file_plan(ws, "p_and_t", wages_by_sex(ws, negate(q)), "Wages outside a county")
    assert released_alone(first), seen(first)["outputs"][0]["reasons"]
    second = file_plan(ws, "q", wages_by_sex(ws, q), "Wages in a county")
    assert released_alone(second), seen(second)["outputs"][0]["reasons"]
    third = file_plan(ws, "p_and_q", wages_by_sex(ws, negate(where)), "Wages once more")
    output = seen(third)["outputs"][0]
    assert not released_alone(third) and output["check_status"] == "fail", output["reasons"]
    (reason,) = [r for r in output["reasons"] if "Together with" in r]
    assert "Wages outside a county" in reason and "Wages in a county" in reason, reason
    assert names_only_releases(reason), reason


def test_two_overlapping_sums_that_determine_nobodys_wage_are_released(ws):
    """The negative control: the difference is a whole county's wages by sex, many persons with
    no dominant earner; the second sum leaves alone (before the server passed the values, the
    audit could not check the determined totals and sent it to a reviewer)."""
    rows = extract(ws)
    sizes = rows.groupby("municipality", observed=True)["person_id"].nunique()
    code = str(sizes.idxmax())
    first = file_plan(ws, "everyone", wages_by_sex(ws, None), "Wages by sex")
    assert released_alone(first), seen(first)["outputs"][0]["reasons"]
    second = file_plan(ws, "all_but_county", wages_by_sex(ws, negate(county(code))), "Again")
    output = seen(second)["outputs"][0]
    assert released_alone(second), output["reasons"]
    assert output["report"]["cumulative_audit"]["status"] == "pass"
