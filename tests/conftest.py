"""Test fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL comes from SPE_TEST_POSTGRES_URL (default: the server at 127.0.0.1:5432, database
``test``). Each run gets its own schema, dropped at the end. Where the server cannot be reached
the PostgreSQL half skips with the reason, except under CI, where it fails: CI must test both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get(
    "SPE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = bool(os.environ.get("CI"))

_pg_state: dict[str, Any] = {}


def _pg_reachable() -> str | None:
    """None when PostgreSQL answers, else the reason."""
    if "reason" not in _pg_state:
        try:
            engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            _pg_state["reason"] = None
        except Exception as exc:  # any failure means: not usable here
            _pg_state["reason"] = (
                f"PostgreSQL at {PG_URL} is not reachable ({exc.__class__.__name__})"
            )
    return _pg_state["reason"]


# --- parallel runs -----------------------------------------------------------------------------
# `make test` runs the suite in parallel worker processes (pytest-xdist), one file at a time per
# worker, so that module fixtures are built once. The files that start real sandboxes form one
# scope, run by one worker one after another: a sandbox's unix user, uid and cgroup are derived
# from its workspace name (project--user), and the test worlds of different files share names.
# The scope comes first in the queue (its first file is the browser story), so the longest
# serial chain starts at once.
SANDBOX_FILES = (
    "tests/browser/",
    "tests/security/",
    "tests/integration/test_hub.py",
    "tests/integration/test_workspace_story.py",
    "tests/integration/test_egress_selftest.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadFileScheduling

    class FilesAndSandboxes(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "sandboxes" if path.startswith(SANDBOX_FILES) else path

    return FilesAndSandboxes(config, log)


def _clear_spe_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SPE_") and not key.startswith("SPE_TEST_"):
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema for this test run."""
    reason = _pg_reachable()
    if reason:
        if IN_CI:
            pytest.fail(reason + "; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    schema = f"spe_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database with keys, copied for each test (migrating is slow)."""
    base = tmp_path_factory.mktemp("template")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
    env["SPE_STATE_DIR"] = str(base)
    subprocess.run(
        [sys.executable, "-m", "spe.cli", "db", "upgrade"], env=env, check=True, capture_output=True
    )
    return base


def _reset_spe() -> None:
    from spe.config import reset_settings
    from spe.db.session import reset_engine
    from spe.keys.signing import forget_cached_keys

    reset_engine()
    reset_settings()
    forget_cached_keys()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def spe_env(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sqlite_template: Path,
) -> Iterator[dict[str, str]]:
    """A migrated, empty SPE (database, platform key, audit key) on the backend under test.

    Yields the environment variables that point a subprocess at the same SPE.
    """
    _clear_spe_env(monkeypatch)
    state = tmp_path / "var"
    env = {"SPE_STATE_DIR": str(state)}
    if backend == "sqlite":
        shutil.copytree(sqlite_template, state)
        os.chmod(state / "keys" / "platform.key", 0o600)
    else:
        url = request.getfixturevalue("pg_schema_url")
        env["SPE_DATABASE_URL"] = url
        state.mkdir()
        (state / "keys").mkdir(mode=0o700)
        shutil.copy(sqlite_template / "keys" / "platform.key", state / "keys" / "platform.key")
        os.chmod(state / "keys" / "platform.key", 0o600)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _reset_spe()
    if backend == "postgresql":
        from spe.db.migrate import upgrade
        from spe.setup import ensure_keys

        upgrade()
        ensure_keys()
    yield env
    if backend == "postgresql":
        from spe.db.models import Base
        from spe.db.session import get_engine

        engine = get_engine(check_schema=False)
        names = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} CASCADE"))
    _reset_spe()


@pytest.fixture
def run_spe(spe_env: dict[str, str]) -> Any:
    """Run the `spe` command in a subprocess against the test's SPE."""

    def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Any:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
        full_env.update(spe_env)
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "spe.cli", *args],
            env=full_env,
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )

    return run


class World:
    """A small platform: one data holder, two institutions, a user per role, a project."""

    def __init__(self) -> None:
        import datetime as dt

        from spe.accounts.models import OrgKind, Role
        from spe.accounts.service import (
            bootstrap_operator,
            create_organisation,
            create_user,
            get_user,
            grant_role,
        )
        from spe.db import transaction
        from spe.projects.service import create_project

        with transaction() as s:
            bootstrap_operator(s, "op")
        with transaction() as s:
            op = get_user(s, "op")
            holder = create_organisation(s, op, "Holder Agency", OrgKind.DATA_HOLDER)
            other_holder = create_organisation(s, op, "Other Agency", OrgKind.DATA_HOLDER)
            uni = create_organisation(s, op, "Uni A", OrgKind.RESEARCH_INSTITUTION)
            uni_b = create_organisation(s, op, "Uni B", OrgKind.RESEARCH_INSTITUTION)
            spec = [
                ("researcher", uni, Role.RESEARCHER),
                ("researcher2", uni, Role.RESEARCHER),
                ("researcher_b", uni_b, Role.RESEARCHER),
                ("reviewer", holder, Role.HOLDER_REVIEWER),
                ("reviewer2", holder, Role.HOLDER_REVIEWER),
                ("other_reviewer", other_holder, Role.HOLDER_REVIEWER),
                ("auditor", None, Role.AUDITOR),
                ("inst_admin", uni, Role.INSTITUTION_ADMIN),
                ("inst_admin_b", uni_b, Role.INSTITUTION_ADMIN),
            ]
            for name, org, role in spec:
                user, _ = create_user(s, op, name, org, password="correct horse battery")
                grant_role(s, op, user, role, org if org is not None else None)
        with transaction() as s:
            today = dt.datetime.now(dt.UTC).date()
            create_project(
                s,
                get_user(s, "researcher"),
                "study",
                "A study",
                "Income and education",
                get_organisation_by(s, "Holder Agency"),
                get_organisation_by(s, "Uni A"),
                today,
                today + dt.timedelta(days=30),
            )


def get_organisation_by(session: Any, name: str) -> Any:
    from spe.accounts.service import get_organisation

    return get_organisation(session, name)


@pytest.fixture
def world(spe_env: dict[str, str]) -> World:
    return World()


def table_snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every SPE table, to prove a failed command changed nothing."""
    from spe.db.models import Base
    from spe.db.session import get_engine

    engine = get_engine()
    out = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(table.select()).all()
            out[table.name] = sorted(tuple(map(repr, r)) for r in rows)
    return out


TEST_POLICY = """\
dataset: {name}
title: People ({name})
description: Test people.
holder: Holder Agency
conditions: For tests.
one_row_per_person: {one_row}
encoding: {encoding}
identifiers:
  allow_synthetic: true
  allow_d_number: true
columns:
  fnr: {{class: person_id}}
  name: {{class: direct_identifier}}
  birth_date: {{class: quasi_identifier, type: date}}
  municipality: {{class: quasi_identifier}}
  income: {{class: attribute, type: int64}}
"""


def synthetic_numbers(n: int, start: int = 0) -> list[str]:
    """n distinct valid synthetic fødselsnummer (month + 80)."""
    import datetime as dt

    from spe.ingest.identifiers import IdKind, make_fnr

    out: list[str] = []
    k = start
    while len(out) < n:
        day = dt.date(1950, 1, 1) + dt.timedelta(days=k % 18000)
        individual = 1 + 2 * ((k // 18000) % 240)
        number = make_fnr(day, individual, "M", IdKind.SYNTHETIC)
        if number is not None:
            out.append(number)
        k += 1
    return out


def write_people_csv(
    path: Path, numbers: list[str], delimiter: str = ",", encoding: str = "utf-8"
) -> Path:
    lines = [delimiter.join(["fnr", "name", "birth_date", "municipality", "income"])]
    for i, number in enumerate(numbers):
        lines.append(
            delimiter.join(
                [
                    number,
                    f"Åse Ødegård {i}",
                    "1970-05-17",
                    ["0301", "4601", "5001"][i % 3],
                    str(1000 * i),
                ]
            )
        )
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def write_policy(
    folder: Path, name: str = "people", one_row: bool = True, encoding: str = "utf-8"
) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        TEST_POLICY.format(name=name, one_row="true" if one_row else "false", encoding=encoding)
    )
    return path


@pytest.fixture
def people(world: World, tmp_path: Path) -> dict[str, Any]:
    """A small dataset 'people' ingested for Holder Agency (by 'reviewer')."""
    from spe.ingest.pipeline import ingest
    from spe.ingest.policy import load_policy

    numbers = synthetic_numbers(60)
    csv_path = write_people_csv(tmp_path / "people.csv", numbers)
    policy = load_policy(write_policy(tmp_path))
    result = ingest("reviewer", csv_path, policy)
    return {"numbers": numbers, "csv": csv_path, "policy": policy, "result": result}
