"""The ``spe`` command: operators, data holders and auditors drive the platform from here.

Commands that act for a person take ``--as USER`` (or ``SPE_CLI_USER``) and are checked like
any other request. Errors print one sentence and exit non-zero; never a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from spe.clictx import acting
from spe.errors import SPEError


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


_acting = acting


def _date(value: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date; use YYYY-MM-DD.", param_hint=option
        ) from None


@click.group()
@click.option("--as", "as_user", metavar="USER", help="The SPE user this command acts as.")
@click.option("--debug", is_flag=True, help="Show the traceback of an internal error.")
@click.version_option(package_name="spe")
@click.pass_context
def cli(ctx: click.Context, as_user: str | None, debug: bool) -> None:
    """SPE: a secure processing environment for pseudonymised registry data."""
    from spe.config import get_settings

    ctx.ensure_object(dict)
    ctx.obj["as_user"] = as_user or get_settings().cli_user


# --- config and database -----------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Settings (environment variables SPE_*)."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def config_show(as_json: bool) -> None:
    """Print the effective settings, secrets masked."""
    from spe.config import get_settings

    rows = get_settings().describe()
    if as_json:
        click.echo(json.dumps({name: value for name, value, _ in rows}, indent=2))
        return
    width = max(len(r[0]) for r in rows)
    for name, value, help_text in rows:
        click.echo(f"{name:<{width}}  {value}")
        click.echo(f"{'':<{width}}  # {help_text}")


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema, and the platform's keys on first run."""
    from spe.db.migrate import upgrade
    from spe.setup import ensure_keys

    before, after = upgrade()
    created = ensure_keys()
    if before == after:
        click.echo(f"Database schema is current ({after}).")
    else:
        click.echo(f"Database schema upgraded from {before or 'nothing'} to {after}.")
    if created:
        click.echo("Created the audit signing key (wrapped by the platform key).")


@db.command("status")
def db_status() -> None:
    """Show the schema revision of the database and the one this SPE needs."""
    from spe.config import get_settings, mask_url
    from spe.db.migrate import current_revision, head_revision
    from spe.db.session import get_engine, ping

    engine = get_engine(check_schema=False)
    ping(engine)
    current, head = current_revision(engine), head_revision()
    click.echo(f"database: {mask_url(get_settings().database_url)}")
    click.echo(f"schema:   {current or 'none'} (this SPE needs {head})")
    if current != head:
        _fail("The schema is not current; run `spe db upgrade`.", 5)


# --- bootstrap ---------------------------------------------------------------------------------


@cli.command("init")
@click.option("--operator", "operator", required=True, help="Username of the first operator.")
def init(operator: str) -> None:
    """Create the database, keys and the first platform operator (prints a one-time password)."""
    from spe.accounts.service import bootstrap_operator
    from spe.db import transaction
    from spe.db.migrate import upgrade
    from spe.setup import ensure_keys

    upgrade()
    ensure_keys()
    with transaction() as session:
        password = bootstrap_operator(session, operator)
    click.echo(f"Created operator {operator}; one-time password (shown once): {password}")


# --- organisations and users -------------------------------------------------------------------


@cli.group()
def org() -> None:
    """Organisations: data holders and research institutions."""


@org.command("add")
@click.argument("name")
@click.option("--kind", required=True, help="data_holder (holder) or research_institution.")
@click.pass_context
def org_add(ctx: click.Context, name: str, kind: str) -> None:
    """Add an organisation (operators)."""
    from spe.accounts.service import create_organisation, parse_org_kind

    with _acting(ctx) as (session, actor):
        o = create_organisation(session, actor, name, parse_org_kind(kind))
        click.echo(f"Added {o.kind.value.replace('_', ' ')} {o.name}.")


@org.command("list")
def org_list() -> None:
    """List organisations."""
    from sqlalchemy import select

    from spe.accounts.models import Organisation
    from spe.db import readonly

    with readonly() as session:
        for o in session.scalars(select(Organisation).order_by(Organisation.name)):
            click.echo(f"{o.name}\t{o.kind.value}")


@cli.group()
def user() -> None:
    """Accounts."""


@user.command("add")
@click.argument("username")
@click.option("--org", "org_name", help="The person's organisation.")
@click.option("--name", "full_name", default="", help="Full name.")
@click.option("--email", default="", help="E-mail address.")
@click.option("--role", "roles", multiple=True, help="Role(s) to grant, for --org where scoped.")
@click.pass_context
def user_add(
    ctx: click.Context,
    username: str,
    org_name: str | None,
    full_name: str,
    email: str,
    roles: tuple[str, ...],
) -> None:
    """Add an account; prints its one-time password once."""
    from spe.accounts.permissions import PLATFORM_ROLES
    from spe.accounts.service import create_user, get_organisation, grant_role, parse_role

    with _acting(ctx) as (session, actor):
        organisation = get_organisation(session, org_name) if org_name else None
        new, password = create_user(session, actor, username, organisation, full_name, email)
        for name in roles:
            role = parse_role(name)
            grant_role(session, actor, new, role, None if role in PLATFORM_ROLES else organisation)
    click.echo(f"Added {username}; one-time password (shown once): {password}")


@user.command("list")
def user_list() -> None:
    """List accounts with their roles."""
    from sqlalchemy import select

    from spe.accounts.models import User
    from spe.db import readonly

    with readonly() as session:
        for u in session.scalars(select(User).order_by(User.username)):
            roles = ",".join(sorted(g.role.value for g in u.roles)) or "-"
            org_name = u.organisation.name if u.organisation else "-"
            state = "active" if u.active else f"deactivated ({u.deactivation_reason})"
            click.echo(f"{u.username}\t{org_name}\t{roles}\t{state}")


@user.command("deactivate")
@click.argument("username")
@click.option("--reason", required=True)
@click.pass_context
def user_deactivate(ctx: click.Context, username: str, reason: str) -> None:
    """Deactivate an account."""
    from spe.accounts.service import deactivate_user, get_user

    with _acting(ctx) as (session, actor):
        deactivate_user(session, actor, get_user(session, username), reason)
    click.echo(f"Deactivated {username}.")


@user.command("reactivate")
@click.argument("username")
@click.pass_context
def user_reactivate(ctx: click.Context, username: str) -> None:
    """Reactivate an account."""
    from spe.accounts.service import get_user, reactivate_user

    with _acting(ctx) as (session, actor):
        reactivate_user(session, actor, get_user(session, username))
    click.echo(f"Reactivated {username}.")


@user.command("reset-password")
@click.argument("username")
@click.pass_context
def user_reset_password(ctx: click.Context, username: str) -> None:
    """Give an account a new one-time password."""
    from spe.accounts.service import get_user, reset_password

    with _acting(ctx) as (session, actor):
        password = reset_password(session, actor, get_user(session, username))
    click.echo(f"New one-time password for {username} (shown once): {password}")


@user.command("password")
@click.pass_context
def user_password(ctx: click.Context) -> None:
    """Change your own password (asks for the current one and the new one twice; from a pipe:
    the current on the first line, the new on the second). Every login and API token of yours
    ends."""
    from spe.accounts.password_rules import PasswordRejected
    from spe.accounts.service import change_password

    if sys.stdin.isatty():
        current = click.prompt("Current password", hide_input=True)
        new = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    else:
        lines = sys.stdin.read().splitlines()
        if len(lines) < 2:
            raise PasswordRejected(
                "Give the current password on the first line and the new one on the second."
            )
        current, new = lines[0], lines[1]
    with _acting(ctx) as (session, actor):
        ended = change_password(session, actor, current, new)
    click.echo(
        f"Your password is changed; {ended['sessions']} login(s) and {ended['tokens']} API "
        "token(s) of yours have ended."
    )


@user.command("mfa-reset")
@click.argument("username")
@click.option("--reason", default="", help="Why (e.g. a lost phone); kept in the audit log.")
@click.pass_context
def user_mfa_reset(ctx: click.Context, username: str, reason: str) -> None:
    """Reset a person's two-step login (operators; institution admins for their people). Every
    login and API token of theirs ends; they set it up again at their next login."""
    from spe.accounts.mfa import reset_mfa
    from spe.accounts.service import get_user

    with _acting(ctx) as (session, actor):
        ended = reset_mfa(session, actor, get_user(session, username), reason)
    click.echo(
        f"Reset the two-step login of {username}; {ended['sessions']} login(s) and "
        f"{ended['tokens']} API token(s) of theirs have ended."
    )


@user.command("deactivate-inactive")
def user_deactivate_inactive() -> None:
    """Deactivate accounts inactive for longer than SPE_INACTIVITY_DAYS."""
    from spe.accounts.service import deactivate_inactive
    from spe.config import get_settings
    from spe.db import transaction

    days = get_settings().inactivity_days
    with transaction() as session:
        done = deactivate_inactive(session, days)
    click.echo(f"Deactivated {len(done)} account(s) inactive for {days} days or more.")
    for name in done:
        click.echo(f"  {name}")


@user.command("enrol")
@click.argument("username")
@click.option("--name", "full_name", default="")
@click.option("--email", default="")
@click.pass_context
def user_enrol(ctx: click.Context, username: str, full_name: str, email: str) -> None:
    """Enrol a researcher of your institution (institution admins)."""
    from spe.accounts.service import enrol_researcher

    with _acting(ctx) as (session, actor):
        if actor.organisation is None:
            raise SPEError("You belong to no institution, so cannot enrol researchers.")
        _, password = enrol_researcher(
            session, actor, actor.organisation, username, full_name, email
        )
    click.echo(f"Enrolled {username}; one-time password (shown once): {password}")


@user.command("remove")
@click.argument("username")
@click.option("--reason", required=True)
@click.pass_context
def user_remove(ctx: click.Context, username: str, reason: str) -> None:
    """Remove a researcher of your institution (institution admins)."""
    from spe.accounts.service import get_user, remove_researcher

    with _acting(ctx) as (session, actor):
        remove_researcher(session, actor, get_user(session, username), reason)
    click.echo(f"Removed researcher {username}.")


@cli.group()
def role() -> None:
    """Roles: researcher, holder_reviewer, auditor, institution_admin, operator."""


def _role_change(
    ctx: click.Context, username: str, role_name: str, org_name: str | None, grant: bool
) -> None:
    from spe.accounts.service import get_organisation, get_user, grant_role, parse_role, revoke_role

    with _acting(ctx) as (session, actor):
        target_role = parse_role(role_name)
        organisation = get_organisation(session, org_name) if org_name else None
        target = get_user(session, username)
        (grant_role if grant else revoke_role)(session, actor, target, target_role, organisation)
    verb = "Granted" if grant else "Revoked"
    where = f" for {org_name}" if org_name else ""
    click.echo(f"{verb} {target_role.value}{where} {'to' if grant else 'from'} {username}.")


@role.command("grant")
@click.argument("username")
@click.argument("role_name", metavar="ROLE")
@click.option("--org", "org_name", help="The organisation the role is held for.")
@click.pass_context
def role_grant(ctx: click.Context, username: str, role_name: str, org_name: str | None) -> None:
    """Grant a role."""
    _role_change(ctx, username, role_name, org_name, grant=True)


@role.command("revoke")
@click.argument("username")
@click.argument("role_name", metavar="ROLE")
@click.option("--org", "org_name", help="The organisation the role is held for.")
@click.pass_context
def role_revoke(ctx: click.Context, username: str, role_name: str, org_name: str | None) -> None:
    """Revoke a role."""
    _role_change(ctx, username, role_name, org_name, grant=False)


# --- terms -------------------------------------------------------------------------------------


@cli.group()
def terms() -> None:
    """The platform's terms of use."""


@terms.command("show")
def terms_show() -> None:
    """Print the current terms of use."""
    from spe.accounts.terms import current_terms

    t = current_terms()
    click.echo(f"Terms of use, version {t.version} (sha256 {t.sha256})\n")
    click.echo(t.text)


@terms.command("accept")
@click.pass_context
def terms_accept(ctx: click.Context) -> None:
    """Accept the current terms of use (as --as USER)."""
    from spe.accounts.service import accept_terms

    with _acting(ctx) as (session, actor):
        version = accept_terms(session, actor)
    click.echo(f"{ctx.obj['as_user']} accepted the terms of use, version {version}.")


@terms.command("status")
@click.option("--org", "org_name", required=True)
@click.pass_context
def terms_status_cmd(ctx: click.Context, org_name: str) -> None:
    """Who in an institution has (not) accepted the current terms."""
    from spe.accounts.service import get_organisation, terms_status

    with _acting(ctx) as (session, actor):
        for username, accepted in terms_status(session, actor, get_organisation(session, org_name)):
            click.echo(f"{username}\t{'accepted' if accepted else 'NOT accepted'}")


# --- projects ----------------------------------------------------------------------------------


@cli.group()
def project() -> None:
    """Projects: apply, approve, members, close."""


@project.command("create")
@click.argument("slug")
@click.option("--holder", required=True, help="The data holder asked for data.")
@click.option("--institution", help="Your institution (default: your own organisation).")
@click.option("--title", default="")
@click.option("--purpose", required=True, help="What the data will be used for.")
@click.option("--start", default=None, help="Start date, YYYY-MM-DD (default today).")
@click.option("--end", required=True, help="End date, YYYY-MM-DD.")
@click.pass_context
def project_create(
    ctx: click.Context,
    slug: str,
    holder: str,
    institution: str | None,
    title: str,
    purpose: str,
    start: str | None,
    end: str,
) -> None:
    """Apply for a project (researchers)."""
    from spe.accounts.service import get_organisation
    from spe.projects.service import create_project

    start_date = _date(start, "--start") if start else dt.datetime.now(dt.UTC).date()
    end_date = _date(end, "--end")
    with _acting(ctx) as (session, actor):
        inst = get_organisation(session, institution) if institution else actor.organisation
        if inst is None:
            raise SPEError("Name your institution with --institution.")
        create_project(
            session,
            actor,
            slug,
            title,
            purpose,
            get_organisation(session, holder),
            inst,
            start_date,
            end_date,
        )
    click.echo(f"Applied for project {slug}; it waits for {holder} to decide.")


def _extract_jobs(
    username: str, slug: str, datasets: list[str], inline: bool
) -> list[tuple[str, str]]:
    """Submit one extraction job per granted dataset; (dataset, job id) for each."""
    from spe.tasks import submit_and_dispatch

    return [
        (name, submit_and_dispatch(username, "extract", {"project": slug, "dataset": name}, inline))
        for name in datasets
    ]


@project.command("approve")
@click.argument("slug")
@click.option("--note", default="")
@click.option("--inline", is_flag=True, help="Build the extracts here instead of on a worker.")
@click.pass_context
def project_approve(ctx: click.Context, slug: str, note: str, inline: bool) -> None:
    """Approve a project's application (data holder reviewers); its extracts are built."""
    from spe.projects.extracts import granted_datasets
    from spe.projects.service import approve_project, get_project

    with _acting(ctx) as (session, actor):
        project_row = get_project(session, slug)
        approve_project(session, actor, project_row, note)
        names = granted_datasets(session, project_row)
        username = actor.username
    click.echo(f"Approved project {slug}.")
    for name, job_id in _extract_jobs(username, slug, names, inline):
        click.echo(f"Extraction of {name}: job {job_id} {'done' if inline else 'queued'}.")


@project.command("close")
@click.argument("slug")
@click.option("--reason", required=True)
@click.pass_context
def project_close(ctx: click.Context, slug: str, reason: str) -> None:
    """Close a project, or refuse its application."""
    from spe.projects.service import close_project, get_project
    from spe.workspaces.hub import HubUnavailable, stop_workspaces_of

    with _acting(ctx) as (session, actor):
        close_project(session, actor, get_project(session, slug), reason)
    click.echo(f"Closed project {slug}.")
    try:
        stopped = stop_workspaces_of(slug, reason=f"project closed: {reason}")
    except HubUnavailable as exc:
        click.echo(f"warning: {exc.message} Its workspaces stop at the hub's next check.", err=True)
    else:
        if stopped:
            click.echo(f"Stopped its workspaces: {', '.join(stopped)}.")


@project.command("add-member")
@click.argument("slug")
@click.argument("username")
@click.pass_context
def project_add_member(ctx: click.Context, slug: str, username: str) -> None:
    """Add a researcher to a project."""
    from spe.accounts.service import get_user
    from spe.projects.models import ProjectMemberRequest
    from spe.projects.service import add_member, get_project

    with _acting(ctx) as (session, actor):
        row = get_project(session, slug)
        added = add_member(session, actor, row, get_user(session, username))
        holder = row.holder.name
    if isinstance(added, ProjectMemberRequest):
        click.echo(
            f"Added {username} to {slug}, pending approval by {holder}: no workspace and no data "
            f"until a reviewer of {holder} approves (`spe project member list {slug}`)."
        )
    else:
        click.echo(f"Added {username} to {slug}.")


@project.command("remove-member")
@click.argument("slug")
@click.argument("username")
@click.pass_context
def project_remove_member(ctx: click.Context, slug: str, username: str) -> None:
    """Remove a member from a project."""
    from spe.accounts.service import get_user
    from spe.projects.service import get_project, remove_member

    with _acting(ctx) as (session, actor):
        remove_member(session, actor, get_project(session, slug), get_user(session, username))
    click.echo(f"Removed {username} from {slug}.")


@project.command("list")
def project_list() -> None:
    """List projects."""
    from spe.db import readonly
    from spe.projects.service import list_projects

    with readonly() as session:
        for p in list_projects(session):
            members = ",".join(sorted(m.user.username for m in p.members if m.removed_at is None))
            click.echo(
                f"{p.slug}\t{p.status.value}\t{p.holder.name}\t{p.institution.name}\t"
                f"{p.start_date}..{p.end_date}\t{members}"
            )


# --- audit -------------------------------------------------------------------------------------


@cli.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("seal")
@click.option("--follow", is_flag=True, help="Keep sealing every SPE_SEAL_INTERVAL_SECONDS.")
def audit_seal(follow: bool) -> None:
    """Seal pending events under a signed checkpoint."""
    from spe.audit.seal import run_sealer, seal_all

    if not follow:
        done = seal_all()
        if done:
            click.echo(f"Sealed up to seq {done[-1].tree_size} ({len(done)} checkpoint(s)).")
        else:
            click.echo("Nothing to seal.")
        return
    click.echo("Sealing audit events; Ctrl-C stops.")
    run_sealer(on_seal=lambda cp: click.echo(f"sealed up to seq {cp.tree_size}"))


@audit.command("verify")
@click.option(
    "--checkpoints",
    "checkpoint_file",
    type=click.Path(path_type=Path),
    help="A copy of the checkpoint file kept outside the platform.",
)
@click.option("--public-key", help="The audit public key (hex), if you do not hold the keys.")
@click.option("--json", "as_json", is_flag=True)
def audit_verify(checkpoint_file: Path | None, public_key: str | None, as_json: bool) -> None:
    """Verify the whole log; names the first bad seq and exits non-zero on tampering."""
    from spe.audit.verify import load_external_checkpoints, verify_log
    from spe.config import get_settings
    from spe.db import readonly
    from spe.db.session import get_engine
    from spe.keys.signing import audit_public_key

    settings = get_settings()
    external = load_external_checkpoints(checkpoint_file) if checkpoint_file else None
    if public_key is None:
        with readonly() as session:
            public_key = audit_public_key(session)
    try:
        bytes.fromhex(public_key)
    except ValueError:
        raise SPEError(
            "--public-key must be the hex audit public key (`spe audit public-key`)."
        ) from None
    started = time.perf_counter()
    interactive = sys.stderr.isatty()

    def progress(n: int) -> None:
        if interactive:
            click.echo(f"\rverified {n:,} events", nl=False, err=True)

    report = verify_log(
        get_engine(), public_key, external, settings.seal_interval_seconds, progress
    )
    if interactive:
        click.echo("", err=True)
    elapsed = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps({**report.to_json(), "seconds": round(elapsed, 3)}, indent=2))
    if not report.ok:
        if not as_json:
            click.echo(
                f"TAMPERED: the audit log fails verification; first bad seq "
                f"{report.first_bad_seq}.",
                err=True,
            )
            for finding in report.findings[:20]:
                click.echo(f"  {finding}", err=True)
        sys.exit(8)
    if not as_json:
        rate = report.events_verified / elapsed if elapsed else 0
        click.echo(
            f"OK: {report.events_verified} events and {report.checkpoints_verified} signed "
            f"checkpoints verified in {elapsed:.2f} s ({rate:,.0f} events/s)."
        )
        if external is not None:
            click.echo(f"    {report.external_checkpoints_verified} external checkpoints agree.")
        if report.unsealed:
            late = f", {report.late_unsealed} overdue" if report.late_unsealed else ""
            click.echo(f"    {report.unsealed} events are not sealed yet{late}.")


@audit.command("public-key")
def audit_public_key_cmd() -> None:
    """Print the audit public key (hex) to give to auditors and witnesses."""
    from spe.db import readonly
    from spe.keys.signing import audit_public_key

    with readonly() as session:
        click.echo(audit_public_key(session))


def _filter(since: str | None, until: str | None, **kw: str | None) -> Any:
    from spe.audit.query import EventFilter, parse_time

    return EventFilter(
        since=parse_time(since, "--since") if since else None,
        until=parse_time(until, "--until") if until else None,
        **kw,
    )


def _filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--since", help="From this date or time (UTC unless given)."),
            click.option("--until", help="Before this date or time."),
            click.option("--actor"),
            click.option("--project"),
            click.option("--action", help="An action, or a prefix such as project.*"),
            click.option("--dataset"),
        ]
    ):
        func = option(func)
    return func


def _audited_read(ctx: click.Context, what: str, details: dict[str, Any]) -> None:
    """Reading the log is itself logged, in its own transaction, after the permission check."""
    from spe.accounts.permissions import Action, check_can
    from spe.audit import record

    with _acting(ctx) as (session, actor):
        check_can(session, actor, Action.AUDIT_READ)
        record(session, actor, what, "audit-log", details)


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@click.option("--out", type=click.Path(path_type=Path), help="File to write (default stdout).")
@_filter_options
@click.pass_context
def audit_export(
    ctx: click.Context,
    fmt: str,
    out: Path | None,
    since: str | None,
    until: str | None,
    **kw: str | None,
) -> None:
    """Export events (auditors)."""
    from spe.audit.query import export_events
    from spe.db import readonly

    filt = _filter(since, until, **kw)
    _audited_read(
        ctx, "audit.export", {"format": fmt, **{k: v for k, v in vars(filt).items() if v}}
    )
    with readonly() as session:
        if out:
            tmp = out.with_name(out.name + ".part")
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                n = export_events(session, filt, fmt, fh)
            tmp.replace(out)
            click.echo(f"Exported {n} events to {out}.", err=True)
        else:
            export_events(session, filt, fmt, sys.stdout)


@audit.command("tail")
@click.option("-n", "count", default=20, show_default=True)
@click.option("--follow", "-f", is_flag=True)
@_filter_options
@click.pass_context
def audit_tail(
    ctx: click.Context,
    count: int,
    follow: bool,
    since: str | None,
    until: str | None,
    **kw: str | None,
) -> None:
    """Show the newest events (auditors)."""
    from spe.audit.query import last_events
    from spe.db import readonly

    filt = _filter(since, until, **kw)
    _audited_read(ctx, "audit.tail", {k: v for k, v in vars(filt).items() if v})

    def show(row: Any) -> None:
        seq = row.seq if row.seq is not None else "-"
        click.echo(f"{seq}\t{row.time}\t{row.actor}\t{row.action}\t{row.target}\t{row.details}")

    seen = 0
    with readonly() as session:
        for row in last_events(session, count, filt):
            show(row)
            seen = max(seen, row.id)
    while follow:
        time.sleep(1)
        from sqlalchemy import select

        from spe.audit.models import AuditEvent

        with readonly() as session:
            for row in session.scalars(
                filt.apply(select(AuditEvent).where(AuditEvent.id > seen)).order_by(AuditEvent.id)
            ):
                show(row)
                seen = row.id


@audit.command("prove")
@click.argument("seq", type=int)
@click.pass_context
def audit_prove(ctx: click.Context, seq: int) -> None:
    """Print a proof (JSON) that event SEQ is in the signed log."""
    from spe.audit.query import inclusion_proof
    from spe.db import readonly

    _audited_read(ctx, "audit.prove", {"seq": seq})
    with readonly() as session:
        click.echo(json.dumps(inclusion_proof(session, seq), indent=2, ensure_ascii=False))


@audit.command("consistency")
@click.argument("old", type=int)
@click.argument("new", type=int)
@click.pass_context
def audit_consistency(ctx: click.Context, old: int, new: int) -> None:
    """Print a proof (JSON) that checkpoint NEW extends checkpoint OLD (tree sizes)."""
    from spe.audit.query import consistency_proof
    from spe.db import readonly

    _audited_read(ctx, "audit.consistency", {"old": old, "new": new})
    with readonly() as session:
        click.echo(json.dumps(consistency_proof(session, old, new), indent=2))


@audit.command("check-proof")
@click.argument("proof_file", type=click.Path(path_type=Path, exists=True))
@click.option("--public-key", required=True, help="The audit public key (hex).")
def audit_check_proof(proof_file: Path, public_key: str) -> None:
    """Check a proof offline (needs no database)."""
    from spe.audit.query import check_proof

    try:
        proof = json.loads(proof_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SPEError(f"{proof_file} is not JSON; produce it with `spe audit prove`.") from None
    click.echo("OK: " + check_proof(proof, public_key))


# --- synthetic data, datasets, catalogue, jobs ---------------------------------------------------


@cli.group()
def synth() -> None:
    """Synthetic data to develop, demo and benchmark against (never real people)."""


@synth.command("registry")
@click.option("--persons", type=click.IntRange(min=1), required=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
def synth_registry(persons: int, seed: int, out_dir: Path) -> None:
    """Write a synthetic Norwegian-style registry (CSV files and a ground-truth manifest)."""
    from spe.ingest.synth import generate_registry

    with click.progressbar(length=persons, label="generating", file=sys.stderr) as bar:
        last = [0]

        def progress(done: int, _total: int) -> None:
            bar.update(done - last[0])
            last[0] = done

        manifest = generate_registry(out_dir, persons, seed, progress)
    for name, info in sorted(manifest.get("files", {}).items()):
        rows = info.get("rows", "?") if isinstance(info, dict) else info
        click.echo(f"{out_dir / name}: {rows} rows")
    click.echo(f"Ground truth of the deliberate defects: {out_dir / 'manifest.json'}")


def _job_progress_bar(job_id: str, label: str) -> Any:
    from spe.jobs.service import wait
    from spe.tasks import describe

    state = {"shown": 0, "warned": False, "started": time.monotonic()}
    interactive = sys.stderr.isatty()

    def show(view: Any) -> None:
        waited = time.monotonic() - state["started"]
        if view.status == "queued" and not state["warned"] and waited > 5:
            click.echo("still queued: is a worker running (`spe worker`)?", err=True)
            state["warned"] = True
        if interactive and view.total:
            click.echo(
                f"\r{label}: {view.done:,}/{view.total:,} rows ({view.percent:.0f} %)",
                nl=False,
                err=True,
            )

    view = wait(job_id, show)
    if interactive:
        click.echo("", err=True)
    if view.status == "failed":
        raise SPEError(view.error or "the job failed")
    return view, describe


@cli.group()
def dataset() -> None:
    """Datasets: ingest registry extracts, see versions and ingest reports."""


@dataset.command("ingest")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--policy", "policy_name", required=True, help="Policy file or name in policies/datasets."
)
@click.option(
    "--id-history",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="CSV old,new of changed identifiers, applied before pseudonymisation.",
)
@click.option("--inline", is_flag=True, help="Run here instead of on a worker.")
@click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")
@click.pass_context
def dataset_ingest(
    ctx: click.Context,
    source: Path,
    policy_name: str,
    id_history: Path | None,
    inline: bool,
    no_wait: bool,
) -> None:
    """Ingest an extract (CSV or Parquet) as a new version of its dataset (data holders)."""
    from spe.config import get_settings
    from spe.ingest.policy import find_policy
    from spe.tasks import submit_and_dispatch

    policy = find_policy(policy_name, Path(get_settings().policies_dir))
    if not source.exists():
        raise SPEError(f"There is no file {source}.")
    with _acting(ctx) as (_session, actor):
        username = actor.username
    params = {
        "actor": username,
        "source": str(source.resolve()),
        "policy": str(policy.path.resolve()),
        "history": str(id_history.resolve()) if id_history else None,
    }
    job_id = submit_and_dispatch(username, "ingest", params, inline=inline)
    if no_wait:
        click.echo(job_id)
        return
    view, _ = _job_progress_bar(job_id, "ingesting")
    r = view.result or {}
    verb = "Ingested" if r.get("created") else "Already ingested"
    click.echo(
        f"{verb} {r.get('dataset')} version {r.get('version')}: "
        f"{r.get('accepted', 0):,} rows accepted, "
        f"{sum((r.get('rejected') or {}).values()):,} rejected."
    )
    for reason, count in sorted((r.get("rejected") or {}).items()):
        click.echo(f"  rejected {count:,}: {reason}")


@dataset.command("report")
@click.argument("name")
@click.option("--version", "number", type=int, help="Default: the newest.")
def dataset_report(name: str, number: int | None) -> None:
    """Show a dataset version's ingest report (counts accepted and rejected by reason)."""
    from spe.catalogue.service import get_dataset
    from spe.db import readonly

    with readonly() as session:
        ds = get_dataset(session, name)
        versions = [v for v in ds.versions if number is None or v.version == number]
        if not versions:
            raise SPEError(f"{name} has no version {number}.")
        click.echo(json.dumps(json.loads(versions[-1].report), indent=2, sort_keys=True))


@dataset.command("quarantine")
@click.argument("name")
@click.option("--version", "number", type=int, help="Default: the newest.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.pass_context
def dataset_quarantine(ctx: click.Context, name: str, number: int | None, out: Path) -> None:
    """Decrypt a version's quarantine (rejected rows with reasons) for the data holder."""
    from spe.accounts.permissions import Action, Target, check_can
    from spe.audit import record
    from spe.catalogue.service import get_dataset
    from spe.ingest.pipeline import read_quarantine

    with _acting(ctx) as (session, actor):
        ds = get_dataset(session, name)
        check_can(session, actor, Action.DATASET_QUARANTINE_READ, Target(organisation=ds.holder))
        versions = [v for v in ds.versions if number is None or v.version == number]
        if not versions:
            raise SPEError(f"{name} has no version {number}.")
        text = read_quarantine(session, versions[-1])
        record(
            session,
            actor,
            "dataset.quarantine_read",
            f"dataset:{name}",
            {"version": versions[-1].version},
            dataset=name,
        )
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("line,reason,fields of the rejected row...\n")
        fh.write(text)
    click.echo(f"Wrote {text.count(chr(10)):,} rejected rows to {out} (mode 0600).")


@dataset.command("withdraw")
@click.argument("name")
@click.argument("number", metavar="VERSION", type=int)
@click.option("--reason", required=True, help="Why; kept in the certificate and the audit log.")
@click.pass_context
def dataset_withdraw(ctx: click.Context, name: str, number: int, reason: str) -> None:
    """Withdraw a dataset version: its key is destroyed and its files deleted (data holders)."""
    from spe.catalogue.service import withdraw_version

    with _acting(ctx) as (session, actor):
        cert = withdraw_version(session, actor, name, number, reason)
    click.echo(
        f"Withdrew version {number} of {name}: its data key is destroyed and "
        f"{len(cert['files'])} files deleted; the signed certificate is in the audit log "
        f"(key {cert['key_id']})."
    )


@cli.group()
def catalogue() -> None:
    """The public catalogue of datasets: the DGA Article 8 information point."""


@catalogue.command("list")
def catalogue_list() -> None:
    """List datasets."""
    from spe.catalogue.service import describe, list_datasets
    from spe.db import readonly

    with readonly() as session:
        for ds in list_datasets(session):
            d = describe(ds)
            click.echo(
                f"{d['name']}\tv{d['version']}\t{d['rows']:,} rows\t{d['holder']}\t{d['title']}"
            )


@catalogue.command("show")
@click.argument("name")
def catalogue_show(name: str) -> None:
    """Show one dataset: variables, size, coverage, conditions, versions."""
    from spe.catalogue.service import describe, get_dataset
    from spe.db import readonly

    with readonly() as session:
        click.echo(json.dumps(describe(get_dataset(session, name)), indent=2, ensure_ascii=False))


@catalogue.command("export")
@click.option("--out", type=click.Path(path_type=Path), help="Default: stdout.")
def catalogue_export(out: Path | None) -> None:
    """Export the catalogue as DCAT-AP JSON-LD."""
    from spe.catalogue.service import dcat_text, list_datasets
    from spe.db import readonly

    with readonly() as session:
        text = dcat_text(list_datasets(session))
    if out:
        out.write_text(text + "\n", encoding="utf-8")
    else:
        click.echo(text)


@project.command("grant")
@click.argument("slug")
@click.argument("dataset_name", metavar="DATASET")
@click.option("--variables", required=True, help="Comma-separated variables to grant.")
@click.option("--generalise", "generalise", multiple=True, metavar="VAR=year|county")
@click.option("--inline", is_flag=True, help="Extract here instead of on a worker.")
@click.pass_context
def project_grant(
    ctx: click.Context,
    slug: str,
    dataset_name: str,
    variables: str,
    generalise: tuple[str, ...],
    inline: bool,
) -> None:
    """Grant a project variables of a dataset (data holder reviewers); extracts if approved."""
    from spe.projects.extracts import grant_dataset
    from spe.projects.models import ProjectStatus
    from spe.projects.service import get_project

    gens = {}
    for item in generalise:
        name, sep, how = item.partition("=")
        if not sep:
            raise SPEError(f"--generalise {item!r} must look like birth_date=year.")
        gens[name.strip()] = how.strip()
    with _acting(ctx) as (session, actor):
        project_row = get_project(session, slug)
        grant_dataset(
            session,
            actor,
            project_row,
            dataset_name,
            [v.strip() for v in variables.split(",") if v.strip()],
            gens,
        )
        approved = project_row.status == ProjectStatus.APPROVED
        username = actor.username
    click.echo(f"Granted {slug} access to {dataset_name}.")
    if approved:
        ((_, job_id),) = _extract_jobs(username, slug, [dataset_name], inline)
        click.echo(f"Extraction job {job_id} {'done' if inline else 'queued'}.")


@project.command("extract")
@click.argument("slug")
@click.option("--inline", is_flag=True, help="Run here instead of on a worker.")
@click.pass_context
def project_extract(ctx: click.Context, slug: str, inline: bool) -> None:
    """(Re)build the project's extracts of all its granted datasets."""
    from spe.projects.extracts import granted_datasets
    from spe.projects.service import get_project

    with _acting(ctx) as (session, actor):
        names = granted_datasets(session, get_project(session, slug))
        username = actor.username
    for name, job_id in _extract_jobs(username, slug, names, inline):
        view, describe = _job_progress_bar(job_id, f"extracting {name}")
        click.echo(describe(view))


@cli.command("worker")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True)
def worker(concurrency: int) -> None:
    """Run a Celery worker for ingest and extraction jobs."""
    from spe.tasks import worker_main

    worker_main(concurrency)


@cli.group()
def task() -> None:
    """Jobs run by the workers."""


@task.command("status")
@click.argument("job_id")
def task_status(job_id: str) -> None:
    """Show a job's status and progress."""
    from spe.jobs.service import get
    from spe.tasks import describe

    click.echo(describe(get(job_id)))


# --- export requests ----------------------------------------------------------------------------

from spe.exports.commands import export  # noqa: E402 - the group lives with its capability

cli.add_command(export)

from spe.projects.commands import member  # noqa: E402 - the group lives with its capability

project.add_command(member)

from spe.dp.commands import dp  # noqa: E402 - the group lives with its capability

cli.add_command(dp)

from spe.k8s.commands import k8s  # noqa: E402 - the group lives with its capability

cli.add_command(k8s)


# --- disclosure control -------------------------------------------------------------------------


@cli.group()
def sdc() -> None:
    """Disclosure control checks (exit 0 pass, 9 fail, 10 needs a human review)."""


_SDC_EXIT = {"pass": 0, "fail": 9, "review": 10}


def _sdc_print(report: Any, as_json: bool) -> None:
    if as_json:
        click.echo(report.to_json())
    else:
        data = report.to_dict()
        click.echo(f"status: {data['status']}")
        for cell in data.get("cells", []):
            for rule in cell.get("failing", []):
                labels = ", ".join(str(x) for x in (*cell["index"], *cell["columns"]))
                click.echo(f"  [{labels}] {rule['verdict']}: {rule['sentence']}")
        for rule in data.get("failing", []):
            click.echo(f"  {rule['verdict']}: {rule['sentence']}")
        for note in data.get("notes", []):
            click.echo(f"  note: {note}")
    sys.exit(_SDC_EXIT.get(report.to_dict()["status"], 9))


@sdc.command("crosstab")
@click.option(
    "--data",
    "data",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="CSV or Parquet file.",
)
@click.option("--index", required=True, help="Comma-separated row variables.")
@click.option("--columns", required=True, help="Comma-separated column variables.")
@click.option("--values", help="The variable to aggregate (with --agg other than count).")
@click.option(
    "--agg",
    default="count",
    show_default=True,
    type=click.Choice(["count", "sum", "mean", "median", "std", "min", "max", "mode"]),
)
@click.option("--person-id", help="The pseudonymised person column (counts persons, not rows).")
@click.option(
    "--policy",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A stricter rules file (it can only tighten the rules).",
)
@click.option("--holder", help="Apply this data holder's rules.")
@click.option("--dataset", "dataset_name", help="Apply this dataset's rules.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable report.")
def sdc_crosstab(
    data: Path,
    index: str,
    columns: str,
    values: str | None,
    agg: str,
    person_id: str | None,
    policy: Path | None,
    holder: str | None,
    dataset_name: str | None,
    as_json: bool,
) -> None:
    """Check a table: every cell, every rule, with the numbers behind each verdict."""
    from spe.sdc.commands import crosstab_command

    report = crosstab_command(
        data, index, columns, values, agg, person_id, policy, holder=holder, dataset=dataset_name
    )
    _sdc_print(report, as_json)


@sdc.command("model")
@click.option(
    "--data",
    "data",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="CSV or Parquet file.",
)
@click.option("--formula", required=True, help='A model formula, e.g. "y ~ x1 + x2".')
@click.option(
    "--kind", default="ols", show_default=True, type=click.Choice(["ols", "logit", "probit"])
)
@click.option("--person-id", help="The pseudonymised person column.")
@click.option("--policy", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--holder", help="Apply this data holder's rules.")
@click.option("--dataset", "dataset_name", help="Apply this dataset's rules.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable report.")
def sdc_model(
    data: Path,
    formula: str,
    kind: str,
    person_id: str | None,
    policy: Path | None,
    holder: str | None,
    dataset_name: str | None,
    as_json: bool,
) -> None:
    """Check a model (residual degrees of freedom and more)."""
    from spe.sdc.commands import model_command

    report = model_command(
        data, formula, kind, person_id, policy, holder=holder, dataset=dataset_name
    )
    _sdc_print(report, as_json)


# --- demo and platform -------------------------------------------------------------------------


@cli.command("demo")
@click.option("--no-start", is_flag=True, help="Set up and print the logins, start nothing.")
def demo(no_start: bool) -> None:
    """Set up a demo platform with users of every role, print their logins, and start it."""
    from spe.demo import run_demo

    run_demo(start=not no_start)


@cli.command("api")
def api() -> None:
    """Serve the SPE API (export requests and review) on SPE_API_HOST:SPE_API_PORT."""
    import uvicorn

    from spe.api import create_app
    from spe.config import get_settings

    settings = get_settings()
    uvicorn.run(create_app(), host=settings.api_host, port=settings.api_port, log_level="info")


@cli.command("hub")
@click.option("--public-url", help="Where users reach the front door (default: its address).")
def hub(public_url: str | None) -> None:
    """Run JupyterHub with the generated configuration (it runs the API and the worker)."""
    from spe.config import get_settings
    from spe.workspaces.hub import run_hub

    run_hub(public_url or f"http://127.0.0.1:{get_settings().hub_port}/")


@cli.command("airlock")
def airlock() -> None:
    """Serve the airlock: one unix socket per running workspace (cells, loads, exports)."""
    from spe.workspaces.airlock import run_airlock

    run_airlock()


@cli.group()
def token() -> None:
    """Tokens for the SPE API."""


@token.command("create")
@click.option("--name", default="api", help="What the token is for.")
@click.option("--days", default=30, show_default=True, help="How long it lives.")
@click.option(
    "--code",
    default=None,
    help="With two-step login: the current code of your authenticator app (asked if missing).",
)
@click.pass_context
def token_create(ctx: click.Context, name: str, days: int, code: str | None) -> None:
    """Create an API token for yourself; it is shown once. An account with two-step login
    proves it with a current code; one whose role needs it and has none gets no token."""
    from spe.accounts import mfa
    from spe.accounts.tokens import create_token

    with _acting(ctx) as (session, actor):
        if mfa.must_enrol(session, actor):
            raise mfa.MfaError(
                "Your role needs two-step login: set it up on the pages (/services/spe/mfa) "
                "before you create an API token."
            )
        if mfa.enrolled(session, actor):
            if code is None:
                code = click.prompt("Code from your authenticator app", hide_input=True)
            try:
                mfa.check_code(session, actor, code)
            except mfa.MfaError:
                raise mfa.MfaError(
                    "That code is not a current, unused code of your authenticator app; "
                    "type the one it shows now."
                ) from None
        value = create_token(session, actor, name, days)
    click.echo(value)


@token.command("revoke-all")
@click.pass_context
def token_revoke_all(ctx: click.Context) -> None:
    """Revoke every API token of yours."""
    from spe.accounts.tokens import revoke_tokens

    with _acting(ctx) as (session, actor):
        count = revoke_tokens(session, actor)
    click.echo(f"Revoked {count} tokens.")


@cli.command("up")
def up() -> None:
    """Start the platform on this machine: audit sealer, task worker, maintenance."""
    from spe.platform import run_platform

    run_platform()


def main(argv: list[str] | None = None) -> None:
    from sqlalchemy import exc as sa_exc

    try:
        cli.main(args=argv, prog_name="spe", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted.", 130)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except SPEError as error:
        _fail(error.message, error.exit_code)
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as error:
        from spe.config import get_settings
        from spe.db.session import describe_operational_error

        _fail(describe_operational_error(error, get_settings().database_url), 5)
    except KeyboardInterrupt:
        click.echo("stopped.", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as error:  # a bug: say so in one line, keep the traceback for --debug runs
        if "--debug" in (argv or sys.argv):
            raise
        _fail(f"internal error ({type(error).__name__}: {error}); please report it.", 70)


if __name__ == "__main__":
    main()
