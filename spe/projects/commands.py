"""`spe project member ...`: who is in a project, and the data holder's decision on people added
after the project was approved.

The commands only parse options and print; the rules live in spe.projects.service.
"""

from __future__ import annotations

import click

from spe.clictx import acting


@click.group("member")
def member() -> None:
    """A project's members; people added after approval wait for the data holder."""


@member.command("list")
@click.argument("slug")
@click.pass_context
def member_list(ctx: click.Context, slug: str) -> None:
    """Members, and people waiting for (or refused by) the data holder, with the reason."""
    from spe.projects.service import get_project, membership

    with acting(ctx) as (session, actor):
        rows = membership(session, actor, get_project(session, slug))
    for row in rows:
        line = f"{row['username']}\t{row['role']}\t{row['status']}"
        if row["status"] == "pending":
            line += f"\tpending approval by {row['holder']} (added by {row['by']})"
        elif row["status"] in ("refused", "withdrawn"):
            line += f"\tby {row['by']}"
            if row["reason"]:
                line += f": {row['reason']}"
        click.echo(line)


@member.command("approve")
@click.argument("slug")
@click.argument("username")
@click.option("--note", default="", help="A note on the decision, kept in the audit log.")
@click.pass_context
def member_approve(ctx: click.Context, slug: str, username: str, note: str) -> None:
    """Let a person waiting for the data holder into the project (its reviewers only)."""
    from spe.accounts.service import get_user
    from spe.projects.service import approve_member, get_project

    with acting(ctx) as (session, actor):
        approve_member(
            session, actor, get_project(session, slug), get_user(session, username), note
        )
    click.echo(f"Approved {username} as a member of {slug}; they may now open its workspace.")


@member.command("refuse")
@click.argument("slug")
@click.argument("username")
@click.option("--reason", required=True, help="Why; the project's lead sees it.")
@click.pass_context
def member_refuse(ctx: click.Context, slug: str, username: str, reason: str) -> None:
    """Refuse a person waiting for the data holder, with a reason the project's lead sees."""
    from spe.accounts.service import get_user
    from spe.projects.service import get_project, refuse_member

    with acting(ctx) as (session, actor):
        refuse_member(
            session, actor, get_project(session, slug), get_user(session, username), reason
        )
    click.echo(f"Refused {username} in {slug}; the project's lead sees your reason.")
