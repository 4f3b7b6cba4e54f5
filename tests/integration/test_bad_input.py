"""Bad input gets one sentence saying what to fix, a non-zero exit, no traceback, and leaves
the database exactly as it was."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.conftest import table_snapshot


def _one_sentence_error(result, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") or lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("SPE_SEAL_INTERVAL_SECONDS", "soon", "SPE_SEAL_INTERVAL_SECONDS"),
        ("SPE_SEAL_INTERVAL_SECONDS", "-1", "greater than 0"),
        ("SPE_INACTIVITY_DAYS", "eighteen months", "SPE_INACTIVITY_DAYS"),
        ("SPE_DATABASE_URL", "mysql://root@localhost/spe", "postgresql+psycopg://"),
    ],
)
def test_wrong_setting_is_named_with_the_fix(run_spe, variable, value, needle):
    _one_sentence_error(run_spe("org", "list", env={variable: value}), needle)


def test_missing_policies_directory_is_named(run_spe, tmp_path):
    result = run_spe("terms", "show", env={"SPE_POLICIES_DIR": str(tmp_path / "nowhere")})
    _one_sentence_error(result, "terms-v1.md")


def test_unreachable_database_says_so(run_spe):
    result = run_spe(
        "org", "list", env={"SPE_DATABASE_URL": "postgresql+psycopg://spe@127.0.0.1:1/spe"}
    )
    _one_sentence_error(result, "Cannot use the database", "SPE_DATABASE_URL")
    assert result.returncode == 5


def test_database_without_schema_says_run_upgrade(run_spe, tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    result = run_spe("org", "list", env={"SPE_DATABASE_URL": empty})
    _one_sentence_error(result, "spe db upgrade")


def test_database_at_older_migration_says_run_upgrade(spe_env, run_spe):
    from spe.db.session import get_engine

    engine = get_engine()
    with engine.begin() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        conn.execute(text("UPDATE alembic_version SET version_num = '0000_older'"))
    try:
        _one_sentence_error(run_spe("org", "list"), "0000_older", "spe db upgrade")
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :h"), {"h": head})


def test_unknown_user_is_named(world, run_spe):
    _one_sentence_error(
        run_spe("--as", "nobody", "org", "add", "X", "--kind", "holder"), "'nobody'"
    )
    _one_sentence_error(
        run_spe("--as", "op", "user", "deactivate", "ghost", "--reason", "x"), "ghost"
    )


def test_unknown_role_lists_the_roles(world, run_spe):
    result = run_spe("--as", "op", "role", "grant", "researcher2", "wizard", "--org", "Uni A")
    _one_sentence_error(result, "wizard", "holder_reviewer")


def test_acting_without_a_user_says_how(world, run_spe):
    _one_sentence_error(run_spe("org", "add", "X", "--kind", "holder"), "--as")


def _state_but_refusals() -> dict:
    """Every table, less the refusals' own record (issue 16: a refusal writes its event)."""
    state = table_snapshot()
    state.pop("audit_refusal_tallies", None)
    state["audit_events"] = [
        row for row in state.get("audit_events", []) if "'request.refused" not in " ".join(row)
    ]
    return state


def test_failed_command_leaves_the_database_as_it_was(world, run_spe):
    before = _state_but_refusals()
    # The user would be created, then the role fails: everything must roll back.
    result = run_spe("--as", "op", "user", "add", "halfway", "--org", "Uni A", "--role", "wizard")
    _one_sentence_error(result, "wizard")
    # The role needs an organisation of the right kind: fails after the user insert too.
    result = run_spe(
        "--as", "op", "user", "add", "halfway2", "--org", "Uni A", "--role", "holder_reviewer"
    )
    _one_sentence_error(result, "data holder")
    # Permission refused half-way through enrolling.
    result = run_spe("--as", "researcher", "user", "enrol", "sneaky")
    _one_sentence_error(result, "institution admin")
    assert _state_but_refusals() == before


def test_refusal_exit_code_and_sentence(world, run_spe):
    result = run_spe("--as", "researcher", "project", "approve", "study")
    _one_sentence_error(result, "reviewer of the data holder")
    assert result.returncode == 3


def test_refused_ingest_is_one_sentence_on_the_command_line(world, run_spe, tmp_path):
    """Nested Parquet columns were an 'internal error, please report it'; a run whose every row
    is rejected published an empty newest version."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.conftest import synthetic_numbers, write_people_csv, write_policy

    policy = write_policy(tmp_path, "cli")
    nested = tmp_path / "nested.parquet"
    pq.write_table(
        pa.table(
            {
                "fnr": synthetic_numbers(2),
                "name": ["a", "b"],
                "birth_date": ["1970-01-01"] * 2,
                "municipality": pa.array([["0301"], ["4601"]]),
                "income": [1, 2],
            }
        ),
        nested,
    )
    before = table_snapshot()
    ingest = ("--as", "reviewer", "dataset", "ingest", "--policy", str(policy), "--inline")
    result = run_spe(*ingest, str(nested))
    _one_sentence_error(result, "nested column 'municipality'")
    assert "internal error" not in result.stderr
    rejected = write_people_csv(tmp_path / "all_bad.csv", ["12345678901", "00000000000"])
    result = run_spe(*ingest, str(rejected))
    _one_sentence_error(result, "No row of all_bad.csv was accepted", "nothing was published")
    assert table_snapshot()["dataset_versions"] == before["dataset_versions"] == []
    from spe.db import readonly

    with readonly() as s:
        refused = s.execute(
            text("SELECT count(*) FROM audit_events WHERE action = 'dataset.ingest_refused'")
        ).scalar()
    assert refused == 2
