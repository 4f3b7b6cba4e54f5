"""`make demo`: a demo data holder, an institution, a user of every role and an approved
project, with one-time passwords printed once; then the platform starts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
from sqlalchemy import select

from spe.accounts.models import Organisation, OrgKind, Role, User
from spe.accounts.service import (
    accept_terms,
    bootstrap_operator,
    create_organisation,
    create_user,
    get_user,
    grant_role,
    operators_exist,
    reset_password,
)
from spe.config import get_settings
from spe.db import transaction
from spe.db.migrate import upgrade
from spe.errors import SPEError
from spe.projects.models import Project
from spe.projects.service import approve_project, create_project
from spe.setup import ensure_keys

HOLDER = "Demo Registry Agency"
INSTITUTION = "Demo University"
OPERATOR = "demo-operator"
PROJECT = "demo-income-study"
OTHER_PROJECT = "demo-county-study"
DEMO_PERSONS = 20_000
HEALTH_VARIABLES = ["sex", "county", "age", "bmi", "systolic_bp", "diabetes", "gp_visits"]

# username, organisation, role, what they do
DEMO_USERS = [
    ("demo-holder", HOLDER, Role.HOLDER_REVIEWER, "data holder: publishes data, reviews exports"),
    ("demo-reviewer2", HOLDER, Role.HOLDER_REVIEWER, "second reviewer (four eyes)"),
    ("demo-researcher", INSTITUTION, Role.RESEARCHER, "researcher: analyses, asks for exports"),
    ("demo-admin", INSTITUTION, Role.INSTITUTION_ADMIN, "institution admin: enrols researchers"),
    ("demo-auditor", None, Role.AUDITOR, "auditor: reads and verifies the access log"),
]


def _org(session, actor: User, name: str, kind: OrgKind) -> Organisation:
    org = session.scalar(select(Organisation).where(Organisation.name == name))
    return org or create_organisation(session, actor, name, kind)


def set_up_demo() -> list[tuple[str, str, str]]:
    """Create (or refresh) the demo; returns (username, one-time password, role text)."""
    upgrade()
    ensure_keys()
    logins: list[tuple[str, str, str]] = []
    with transaction() as session:
        if not operators_exist(session):
            logins.append((OPERATOR, bootstrap_operator(session, OPERATOR), "platform operator"))
    with transaction() as session:
        try:
            operator = get_user(session, OPERATOR)
        except SPEError:
            raise SPEError(
                "This state directory already holds a platform without the demo operator; "
                "run the demo with its own state: SPE_STATE_DIR=var/demo make demo."
            ) from None
        if not logins:
            logins.append(
                (OPERATOR, reset_password(session, operator, operator), "platform operator")
            )
        holder = _org(session, operator, HOLDER, OrgKind.DATA_HOLDER)
        institution = _org(session, operator, INSTITUTION, OrgKind.RESEARCH_INSTITUTION)
        orgs = {HOLDER: holder, INSTITUTION: institution}
        for username, org_name, role, what in DEMO_USERS:
            org = orgs.get(org_name) if org_name else None
            existing = session.scalar(select(User).where(User.username == username))
            if existing is None:
                user, password = create_user(session, operator, username, org)
                grant_role(session, operator, user, role, org)
            else:
                password = reset_password(session, operator, existing)
            logins.append((username, password, what))
    _demo_project(
        PROJECT,
        "demo-researcher",
        holder,
        institution,
        "Income and education in the demo registry",
        "How education relates to income over the life course (synthetic data).",
    )
    _demo_project(
        OTHER_PROJECT,
        "demo-researcher",
        holder,
        institution,
        "Another study (shows that pseudonyms do not link across projects)",
        "Population structure by county (synthetic data).",
    )
    with transaction() as session:
        accept_terms(session, get_user(session, "demo-researcher"))
    return logins


def _demo_project(
    slug: str, lead: str, holder: Organisation, institution: Organisation, title: str, purpose: str
) -> None:
    with transaction() as session:
        if session.scalar(select(Project.id).where(Project.slug == slug)) is None:
            today = dt.datetime.now(dt.UTC).date()
            create_project(
                session,
                get_user(session, lead),
                slug,
                title,
                purpose,
                holder,
                institution,
                today,
                today + dt.timedelta(days=365),
            )


def publish_demo_data(persons: int = DEMO_PERSONS) -> list[str]:
    """Generate the synthetic registry, ingest it, grant and extract; returns report lines."""
    from spe.ingest.pipeline import ingest
    from spe.ingest.policy import find_policy
    from spe.ingest.synth import generate_registry
    from spe.projects.extracts import extract, grant_dataset

    settings = get_settings()
    folder = Path(settings.state_dir) / "demo-registry"
    if not (folder / "manifest.json").exists():
        click.echo(f"Generating a synthetic registry of {persons:,} persons in {folder} ...")
        generate_registry(folder, persons, seed=2026)
    if not (folder / "health.csv").exists():  # the aggregate-only dataset (spe.dp)
        from spe.dp.synth import write_health_csv

        write_health_csv(folder / "population.csv", folder / "health.csv")
    lines = []
    for name in ("population", "income", "education", "employment", "health"):
        policy = find_policy(name, Path(settings.policies_dir))
        result = ingest("demo-holder", folder / f"{name}.csv", policy)
        rejected = sum(result.rejected.values())
        lines.append(
            f"  {name:<11} v{result.version}: {result.accepted:,} rows, "
            f"{rejected:,} rejected to quarantine"
        )
    grants = {
        PROJECT: {
            "population": (
                ["birth_date", "sex", "municipality"],
                {"birth_date": "year", "municipality": "county"},
            ),
            "income": (["year", "wage_income", "capital_income"], {}),
            "health": (HEALTH_VARIABLES, {}),  # aggregate-only: DP queries, no rows
        },
        OTHER_PROJECT: {"population": (["sex", "municipality"], {"municipality": "county"})},
    }
    for slug, datasets in grants.items():
        with transaction() as session:
            project = session.scalar(select(Project).where(Project.slug == slug))
            assert project is not None  # created by set_up_demo
            holder_user = get_user(session, "demo-holder")
            for name, (variables, gens) in datasets.items():
                grant_dataset(session, holder_user, project, name, variables, gens)
            if project.status.value == "pending":
                approve_project(session, holder_user, project, "demo")
        for name in datasets:
            extract(slug, name)
    lines.append(_join_check())
    return lines


def _join_check() -> str:
    """Show that pseudonyms join within a project and not across projects."""
    import pyarrow.parquet as pq

    from spe.projects.extracts import current_extracts
    from spe.storage import data_storage

    storage = data_storage()
    with transaction() as session:
        ours = current_extracts(
            session, session.scalars(select(Project).where(Project.slug == PROJECT)).one()
        )
        theirs = current_extracts(
            session, session.scalars(select(Project).where(Project.slug == OTHER_PROJECT)).one()
        )
    population = set(
        pq.read_table(storage.path(ours["population"].path), columns=["person_id"])[
            "person_id"
        ].to_pylist()
    )
    income = set(
        pq.read_table(storage.path(ours["income"].path), columns=["person_id"])[
            "person_id"
        ].to_pylist()
    )
    other = set(
        pq.read_table(storage.path(theirs["population"].path), columns=["person_id"])[
            "person_id"
        ].to_pylist()
    )
    return (
        f"  pseudonyms: {len(income & population):,} of {len(income):,} persons in {PROJECT}'s "
        f"income extract join its population extract; {len(population & other)} match "
        f"{OTHER_PROJECT}'s pseudonyms"
    )


# What the demo researcher runs in the workspace of the demo project (a real workspace does the
# same in a notebook): two plans previewed and recorded in the outbox; the server evaluates them.
_WORKSPACE_SCRIPT = """
import spe.analysis as sa
pop = sa.scan("population")
cohorts = pop.derive(cohort=sa.col("birth_date").bin(width=50))
cohorts.crosstab("municipality", ["sex", "cohort"], name="county_cohort", safe="suppress")
pop.crosstab(["municipality", "sex"], "birth_date", name="county_sex_year")
"""


def demo_exports() -> list[str]:
    """Record two plans as the demo researcher and file them: one released at once (the server
    computed it and every check passed), one that waits for the reviewers (it has small cells).
    Skipped when the demo already has requests."""
    import os
    import subprocess
    import sys

    from spe.dp.service import row_mounts
    from spe.exports import actions
    from spe.projects.extracts import workspace_mounts
    from spe.tasks import run_inline

    with transaction() as session:
        researcher = get_user(session, "demo-researcher")
        if actions.list_requests(session, researcher):
            return ["  export requests: already filed by an earlier run"]
        project = session.scalars(select(Project).where(Project.slug == PROJECT)).one()
        mounts = row_mounts(session, project, workspace_mounts(session, project))
        outbox = actions.default_outbox(project, "demo-researcher")
    data = outbox.parent / "data"  # what the sandbox mounts read-only at /data
    data.mkdir(parents=True, exist_ok=True)
    for name, folder in mounts.items():
        link = data / name
        if link.is_symlink():
            link.unlink()
        link.symlink_to(folder, target_is_directory=True)
    env = {**os.environ, "SPE_WORKSPACE_DATA_DIR": str(data), "SPE_OUTBOX_DIR": str(outbox)}
    subprocess.run([sys.executable, "-c", _WORKSPACE_SCRIPT], env=env, check=True)
    lines = []
    for output, why in (
        ("county_cohort.plan.json", "Persons by county, sex and cohort (safe version), table 1."),
        ("county_sex_year.plan.json", "Persons by county, sex and birth year for the appendix."),
    ):
        with transaction() as session:
            request, job = actions.file_request(
                session,
                get_user(session, "demo-researcher"),
                session.scalars(select(Project).where(Project.slug == PROJECT)).one(),
                [actions.OutputRequest(output, why)],
                f"Demo: {output}",
            )
            request_id = str(request.id)
        run_inline(job)
        with transaction() as session:
            status = actions.get_request(session, request_id).status.value.replace("_", " ")
        lines.append(f"  export request {request_id[:8]} ({output}): {status}")
    return lines


def run_demo(start: bool = True) -> None:
    settings = get_settings()
    click.echo(f"Setting up the SPE demo in {settings.state_dir} ...")
    logins = set_up_demo()
    report = publish_demo_data()
    exports = demo_exports()
    from spe.audit.seal import seal_all

    seal_all()
    click.echo("")
    click.echo(
        "Demo logins (one-time passwords, shown only now; each logs in once, to set the "
        "person's own password; `make demo` makes new ones):"
    )
    width = max(len(u) for u, _, _ in logins)
    for username, password, what in logins:
        click.echo(f"  {username:<{width}}  {password}   {what}")
    click.echo("")
    click.echo("Published the synthetic registry (never real people):")
    for line in report:
        click.echo(line)
    click.echo("")
    click.echo("Export review (the demo researcher filed two plans; the server computed both):")
    for line in exports:
        click.echo(line)
    click.echo("")
    door = f"http://127.0.0.1:{settings.hub_port}"
    click.echo(f"Open {door}/ and log in with one of the accounts above:")
    click.echo(f"  {door}/services/spe/           your pages (projects, exports, review, log)")
    click.echo(f"  {door}/services/spe/catalogue  the public catalogue (no login)")
    click.echo(f"  {door}/hub/home                workspaces (a notebook server per project)")
    click.echo("")
    click.echo(f"Demo projects: {PROJECT} and {OTHER_PROJECT} (approved). From the shell:")
    click.echo("  .venv/bin/spe --as demo-holder export queue        # what waits for review")
    click.echo("  .venv/bin/spe --as demo-holder export show ID      # per-cell reasons")
    click.echo("  .venv/bin/spe --as demo-researcher export list")
    click.echo("  .venv/bin/spe --as demo-auditor audit tail")
    click.echo(f"  .venv/bin/spe --as demo-holder dp budget --project {PROJECT}   # DP budgets")
    click.echo("  .venv/bin/spe audit verify")
    click.echo(
        f"  SPE API: http://{settings.api_host}:{settings.api_port}/api/v1/docs "
        "(token: .venv/bin/spe --as demo-holder token create)"
    )
    click.echo("")
    if start:
        from spe.platform import run_platform

        run_platform()
