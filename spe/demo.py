"""`make demo`: a demo data holder, an institution, a user of every role and an approved
project, with one-time passwords printed once; then the platform starts."""

from __future__ import annotations

import datetime as dt

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

# username, organisation, role, what they do
DEMO_USERS = [
    ("demo-holder", HOLDER, Role.HOLDER_REVIEWER, "data holder: publishes data, reviews exports"),
    ("demo-reviewer2", HOLDER, Role.HOLDER_REVIEWER, "second reviewer (four eyes)"),
    ("demo-researcher", INSTITUTION, Role.RESEARCHER, "researcher: analyses, asks for exports"),
    ("demo-admin", INSTITUTION, Role.INSTITUTION_ADMIN, "institution admin: enrols researchers"),
    ("demo-auditor", None, Role.AUDITOR, "auditor: reads and verifies the access log"),
]


def _org(session, actor: User, name: str, kind: OrgKind) -> Organisation:  # type: ignore[no-untyped-def]
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
    with transaction() as session:
        if session.scalar(select(Project.id).where(Project.slug == PROJECT)) is None:
            researcher = get_user(session, "demo-researcher")
            today = dt.datetime.now(dt.UTC).date()
            project = create_project(
                session,
                researcher,
                PROJECT,
                "Income and education in the demo registry",
                "How education relates to income over the life course (synthetic data).",
                holder,
                institution,
                today,
                today + dt.timedelta(days=365),
            )
            accept_terms(session, researcher)
            approve_project(session, get_user(session, "demo-holder"), project, "demo")
    return logins


def run_demo(start: bool = True) -> None:
    settings = get_settings()
    click.echo(f"Setting up the SPE demo in {settings.state_dir} ...")
    logins = set_up_demo()
    from spe.audit.seal import seal_all

    seal_all()
    click.echo("")
    click.echo("Demo logins (one-time passwords, shown only now; `make demo` makes new ones):")
    width = max(len(u) for u, _, _ in logins)
    for username, password, what in logins:
        click.echo(f"  {username:<{width}}  {password}   {what}")
    click.echo("")
    click.echo(f"Demo project: {PROJECT} (approved). Try, for example:")
    click.echo("  .venv/bin/spe --as demo-auditor audit tail")
    click.echo("  .venv/bin/spe audit verify")
    click.echo("  .venv/bin/spe --as demo-researcher project list")
    click.echo("")
    if start:
        from spe.platform import run_platform

        run_platform()
