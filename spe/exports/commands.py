"""`spe export ...`: file, follow, review and verify export requests from the command line.

The commands only parse options and print; every rule lives in spe.exports.actions.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from spe.clictx import acting as _acting


def _pairs(outputs: tuple[str, ...], justifications: tuple[str, ...]) -> list[Any]:
    from spe.exports.actions import OutputRequest

    if len(outputs) != len(justifications):
        raise click.UsageError(
            f"Give one --justification for each --output ({len(outputs)} outputs, "
            f"{len(justifications)} justifications), in the same order."
        )
    return [OutputRequest(n, j) for n, j in zip(outputs, justifications, strict=True)]


def _send(job_id: str, inline: bool) -> str:
    from spe.tasks import dispatch, run_inline

    if inline:
        run_inline(job_id)
        return "checked"
    dispatch(job_id)
    return f"check queued (job {job_id})"


def _show_status(request_id: str) -> str:
    from spe.db import readonly
    from spe.exports.actions import get_request

    with readonly() as session:
        request = get_request(session, request_id)
        return request.status.value.replace("_", " ")


_OUTPUT = click.option(
    "--output",
    "outputs",
    multiple=True,
    required=True,
    metavar="NAME",
    help="A file in the outbox.",
)
_WHY = click.option(
    "--justification",
    "justifications",
    multiple=True,
    required=True,
    metavar="TEXT",
    help="Why this output is needed; one per --output, in order.",
)
_OUTBOX = click.option(
    "--outbox",
    type=click.Path(path_type=Path),
    help="The outbox folder (default: the workspace's outbox of this project).",
)
_INLINE = click.option("--inline", is_flag=True, help="Run the check here instead of on a worker.")


@click.group("export")
def export() -> None:
    """Export requests: file outputs, review them, download and verify release bundles."""


@export.command("file")
@click.option("--project", "slug", required=True)
@_OUTPUT
@_WHY
@click.option("--title", default="")
@_OUTBOX
@_INLINE
@click.pass_context
def export_file(
    ctx: click.Context,
    slug: str,
    outputs: tuple[str, ...],
    justifications: tuple[str, ...],
    title: str,
    outbox: Path | None,
    inline: bool,
) -> None:
    """File a request to export outputs from the outbox; the server checks them again."""
    from spe.exports.actions import file_request
    from spe.projects.service import get_project

    wanted = _pairs(outputs, justifications)
    with _acting(ctx) as (session, actor):
        request, job_id = file_request(
            session, actor, get_project(session, slug), wanted, title, outbox
        )
        request_id = str(request.id)
    state = _send(job_id, inline)
    click.echo(f"Filed export request {request_id}: {state}.")
    if inline:
        click.echo(f"It is now {_show_status(request_id)}; `spe export show {request_id[:8]}`.")


@export.command("list")
@click.option("--project", "slug")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def export_list(ctx: click.Context, slug: str | None, as_json: bool) -> None:
    """Your export requests and their status."""
    from spe.exports.actions import list_requests
    from spe.projects.service import get_project

    with _acting(ctx) as (session, actor):
        rows = list_requests(session, actor, get_project(session, slug) if slug else None)
    _table(rows, as_json, "You have no export requests.")


@export.command("queue")
@click.option("--overdue", is_flag=True, help="Only requests waiting longer than allowed.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def export_queue(ctx: click.Context, overdue: bool, as_json: bool) -> None:
    """Requests waiting for your review, oldest first, with their age."""
    from spe.exports.actions import review_queue

    with _acting(ctx) as (session, actor):
        rows = review_queue(session, actor, overdue_only=overdue)
    _table(rows, as_json, "Nothing is waiting for your review.")


def _table(rows: list[dict[str, Any]], as_json: bool, empty: str) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo(empty)
    for r in rows:
        mark = "  OVERDUE" if r["overdue"] else ""
        click.echo(
            f"{r['id'][:8]}  {r['project']:<20} {r['status']:<18} round {r['round']}  "
            f"{r['age_days']:.1f} days  {r['author']}  {r['title']}{mark}"
        )
        if r.get("revoke_reason"):
            click.echo(f"          revoked: {r['revoke_reason']}")


@export.command("show")
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def export_show(ctx: click.Context, request_id: str, as_json: bool) -> None:
    """A request with each output's check, the reasons per failing cell, votes and comments."""
    from spe.exports.actions import detail, get_request

    with _acting(ctx) as (session, actor):
        data = detail(session, actor, get_request(session, request_id))
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        return
    click.echo(f"Request {data['id']}  ({data['project']}, by {data['author']})")
    click.echo(f"  {data['title']}")
    click.echo(
        f"  status: {data['status'].replace('_', ' ')}, round {data['round']}, "
        f"{data['age_days']:.1f} days old{'  OVERDUE' if data['overdue'] else ''}"
    )
    if data.get("revoke_reason"):
        click.echo(f"  revoked: {data['revoke_reason']}")
    for out in data["outputs"]:
        check = out["check_status"] or "not checked yet"
        decision = f", decision: {out['decision']}" if out["decision"] else ""
        click.echo(f"  - {out['name']} ({out['kind']}): check {check}{decision}")
        click.echo(f"      why needed: {out['justification']}")
        for reason in out["reasons"][:20]:
            click.echo(f"      * {reason}")
        if len(out["reasons"]) > 20:
            click.echo(f"      ... and {len(out['reasons']) - 20} more (--json shows all)")
        if out["pending"]:
            click.echo(f"      waiting: {out['pending']}")
    for v in data["review"]["votes"]:
        click.echo(
            f"  vote r{v['round']} {v['reviewer']} {v['vote']} {v['output']}: {v['comment']}"
        )
    for c in data["review"]["comments"]:
        where = f" on {c['output']}" if c["output"] else ""
        private = " (reviewers only)" if c["visibility"] == "reviewers" else ""
        click.echo(f"  comment r{c['round']} {c['author']}{where}{private}: {c['body']}")


@export.command("vote")
@click.argument("request_id")
@click.argument("output")
@click.argument("choice", type=click.Choice(["approve", "request_changes", "reject"]))
@click.option("--comment", required=True, help="Why; the researcher reads it.")
@click.pass_context
def export_vote(
    ctx: click.Context, request_id: str, output: str, choice: str, comment: str
) -> None:
    """Vote on one output of a request in review (reviewers of the data holder)."""
    from spe.exports.actions import get_request, vote

    with _acting(ctx) as (session, actor):
        vote(session, actor, get_request(session, request_id), output, choice, comment)
    click.echo(f"Voted {choice} on {output}.")


@export.command("comment")
@click.argument("request_id")
@click.argument("text")
@click.option("--output", help="The output the comment is about.")
@click.option("--private", is_flag=True, help="Only the reviewers see it.")
@click.pass_context
def export_comment(
    ctx: click.Context, request_id: str, text: str, output: str | None, private: bool
) -> None:
    """Comment on a request (reviewers may keep a comment among reviewers)."""
    from spe.exports.actions import comment, get_request

    with _acting(ctx) as (session, actor):
        comment(
            session,
            actor,
            get_request(session, request_id),
            text,
            "reviewers" if private else "shared",
            output,
        )
    click.echo("Comment added.")


@export.command("decide")
@click.argument("request_id")
@click.pass_context
def export_decide(ctx: click.Context, request_id: str) -> None:
    """Close the review: release approved outputs, or return or reject the request."""
    from spe.exports.actions import decide, get_request

    with _acting(ctx) as (session, actor):
        status = decide(session, actor, get_request(session, request_id))
    click.echo(f"Request {request_id}: {status.value.replace('_', ' ')}.")


@export.command("withdraw")
@click.argument("request_id")
@click.option("--reason", default="")
@click.pass_context
def export_withdraw(ctx: click.Context, request_id: str, reason: str) -> None:
    """Withdraw your request."""
    from spe.exports.actions import get_request, withdraw

    with _acting(ctx) as (session, actor):
        withdraw(session, actor, get_request(session, request_id), reason)
    click.echo(f"Withdrew request {request_id}.")


@export.command("resubmit")
@click.argument("request_id")
@_OUTPUT
@_WHY
@click.option("--note", default="", help="What you changed.")
@_OUTBOX
@_INLINE
@click.pass_context
def export_resubmit(
    ctx: click.Context,
    request_id: str,
    outputs: tuple[str, ...],
    justifications: tuple[str, ...],
    note: str,
    outbox: Path | None,
    inline: bool,
) -> None:
    """Send changed outputs after reviewers asked for changes (a new round; votes reset)."""
    from spe.exports.actions import get_request, resubmit

    wanted = _pairs(outputs, justifications)
    with _acting(ctx) as (session, actor):
        job_id = resubmit(session, actor, get_request(session, request_id), wanted, note, outbox)
    click.echo(f"Resubmitted request {request_id}: {_send(job_id, inline)}.")


@export.command("revoke")
@click.argument("request_id")
@click.option("--reason", required=True, help="Why; the researcher is told.")
@click.pass_context
def export_revoke(ctx: click.Context, request_id: str, reason: str) -> None:
    """Revoke a released request (reviewers of the data holder)."""
    from spe.exports.actions import get_request, revoke

    with _acting(ctx) as (session, actor):
        revoke(session, actor, get_request(session, request_id), reason)
    click.echo(f"Revoked the release of request {request_id}; its author is told why.")


@export.command("download")
@click.argument("request_id")
@click.option("--to", "target", type=click.Path(path_type=Path), help="Where to save the zip.")
@click.pass_context
def export_download(ctx: click.Context, request_id: str, target: Path | None) -> None:
    """Save the signed release bundle of your released request."""
    from spe.exports.actions import download, get_request

    with _acting(ctx) as (session, actor):
        request = get_request(session, request_id)
        source = download(session, actor, request)
        target = target or Path(f"release-{str(request.id)[:8]}.zip")
        shutil.copyfile(source, target)
    click.echo(f"Saved {target}; check it with `spe export verify {target}`.")


@export.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--public-key", help="The platform's public key (hex), to prove who signed it.")
@click.option("--json", "as_json", is_flag=True)
def export_verify(bundle: Path, public_key: str | None, as_json: bool) -> None:
    """Check a release bundle offline: hashes, nothing added or removed, the signature."""
    from spe.exports.bundle import verify_bundle

    result = verify_bundle(bundle, public_key)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.ok:
        who = (
            "the platform key you gave"
            if result.trusted_key
            else f"key {result.key_id} (give --public-key to check it is the platform's)"
        )
        click.echo(
            f"OK: {len(result.files)} files of request {result.request} ({result.project}), "
            f"released {result.released_at}, unaltered and signed by {who}."
        )
    if not result.ok:
        if not as_json:
            click.echo(f"NOT VALID: {bundle}", err=True)
            for problem in result.problems:
                click.echo(f"  {problem}", err=True)
        sys.exit(6)


@export.command("accept-safe")
@click.argument("request_id")
@click.argument("output")
@click.option(
    "--method",
    type=click.Choice(["suppress", "round"]),
    default="suppress",
    show_default=True,
    help="suppress: failing cells left out (with cells that protect them); round: counts to "
    "multiples of 5.",
)
@_INLINE
@click.pass_context
def export_accept_safe(
    ctx: click.Context, request_id: str, output: str, method: str, inline: bool
) -> None:
    """Replace a failing table of your request by its safe version, computed on the server.

    A new round starts and is checked again; the other outputs come along unchanged.
    """
    from spe.exports.actions import accept_safe_version, get_request

    with _acting(ctx) as (session, actor):
        job_id = accept_safe_version(
            session, actor, get_request(session, request_id), output, method
        )
    click.echo(f"Accepted the {method} safe version of {output}: {_send(job_id, inline)}.")
    if inline:
        click.echo(f"Request {request_id} is now {_show_status(request_id)}.")
