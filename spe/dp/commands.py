"""`spe dp ...`: see privacy budgets, set a dataset's total, top up a project's allocation.

The commands only parse options and print; the rules live in spe.dp.service.
"""

from __future__ import annotations

import click

from spe.clictx import acting


@click.group("dp")
def dp() -> None:
    """Differentially private queries: each dataset's privacy budget and projects' shares."""


@dp.command("budget")
@click.option("--project", "slug", required=True, help="The project's short name.")
@click.pass_context
def budget(ctx: click.Context, slug: str) -> None:
    """Show each aggregate-only dataset's total, spent and remaining epsilon."""
    from spe.dp.service import budgets

    with acting(ctx) as (session, actor):
        rows = budgets(session, actor, slug)
    if not rows:
        click.echo(f"Project {slug} has no aggregate-only dataset, so no privacy budget.")
        return
    click.echo(
        f"{'dataset':<20} {'total':>8} {'spent':>8} {'remaining':>10} {'queries':>8} "
        f"{'dataset left':>13}"
    )
    for row in rows:
        click.echo(
            f"{row['dataset']:<20} {row['total']:>8g} {row['spent']:>8g} "
            f"{row['remaining']:>10g} {row['queries']:>8} {row['dataset_remaining']:>13g}"
        )
    click.echo(
        "total: the project's allocation; remaining: what it may still spend (never more than "
        "what is left of the dataset's own total, shared by every project)."
    )


@dp.command("total")
@click.argument("dataset")
@click.option(
    "--epsilon", type=float, default=None, help="The new total (data holder); omit to show it."
)
@click.pass_context
def total(ctx: click.Context, dataset: str, epsilon: float | None) -> None:
    """Show, or set (data holder), the total privacy budget of an aggregate-only dataset."""
    from spe.dp.service import dataset_budget, set_total

    with acting(ctx) as (session, actor):
        if epsilon is None:
            row = dataset_budget(session, dataset)
        else:
            row = set_total(session, actor, dataset, epsilon)
    click.echo(
        f"{row['dataset']}: total {row['total']:g}, allocated {row['allocated']:g} to "
        f"{row['projects']} project(s), unallocated {row['unallocated']:g}, spent "
        f"{row['spent']:g}, remaining {row['remaining']:g}."
    )


@dp.command("topup")
@click.argument("slug", metavar="PROJECT")
@click.argument("dataset")
@click.option("--epsilon", type=float, required=True, help="How much epsilon to add.")
@click.pass_context
def topup(ctx: click.Context, slug: str, dataset: str, epsilon: float) -> None:
    """Allocate more of a dataset's budget to a project (data holder), at most what is
    unallocated."""
    from spe.dp.service import topup as add

    with acting(ctx) as (session, actor):
        row = add(session, actor, slug, dataset, epsilon)
    click.echo(
        f"Topped up {slug}/{dataset} by {epsilon:g}: total {row['total']:g}, spent "
        f"{row['spent']:g}, remaining {row['remaining']:g}."
    )


@dp.command("queries")
@click.option("--project", "slug", required=True, help="The project's short name.")
@click.pass_context
def queries(ctx: click.Context, slug: str) -> None:
    """List the project's DP queries, newest first: when, who, what, epsilon, answered/refused."""
    from spe.dp.service import history

    with acting(ctx) as (session, actor):
        rows = history(session, actor, slug)
    if not rows:
        click.echo(f"Project {slug} has asked no DP query yet.")
    for row in rows:
        click.echo(
            f"{row['at']:%Y-%m-%d %H:%M:%S}  {row['user']:<16} {row['dataset']:<12} "
            f"{row['kind']:<20} epsilon {row['epsilon']:g}  {row['status']}  {row['query'][:8]}"
        )
