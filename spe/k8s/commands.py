"""`spe k8s`: provision a project on the cluster, remove it, and serve the TCP airlock."""

from __future__ import annotations

from typing import Any

import click

from spe.clictx import acting


@click.group("k8s")
def k8s() -> None:
    """SPE on Kubernetes (needs a cluster: in-cluster or KUBECONFIG)."""


def _print(done: list[Any]) -> None:
    for item in done:
        click.echo(f"{item.kind}/{item.name}: {item.outcome}")


@k8s.command("apply-project")
@click.argument("slug")
@click.pass_context
def apply_project_command(ctx: click.Context, slug: str) -> None:
    """Create or update a project's extract volumes and network policy (idempotent)."""
    from spe.k8s.provision import KubernetesClusterApi, apply_project
    from spe.projects.service import get_project

    api = KubernetesClusterApi()
    with acting(ctx) as (session, actor):
        done = apply_project(session, actor, get_project(session, slug), api)
    _print(done)


@k8s.command("delete-project")
@click.argument("slug")
@click.pass_context
def delete_project_command(ctx: click.Context, slug: str) -> None:
    """Remove a closed project's volumes, tokens and policy; a signed certificate is logged."""
    from spe.k8s.provision import Applied, KubernetesClusterApi, delete_project
    from spe.projects.service import get_project

    api = KubernetesClusterApi()
    with acting(ctx) as (session, actor):
        certificate = delete_project(session, actor, get_project(session, slug), api)
    _print([Applied(o["kind"], o["name"], o["outcome"]) for o in certificate["objects"]])
    click.echo(f"Deletion certificate recorded in the audit log (key {certificate['key_id']}).")


@k8s.command("airlock")
@click.option("--host", default="0.0.0.0", help="Address to listen on (the pod's).")  # noqa: S104
@click.option("--port", type=int, default=None, help="Port (default SPE_K8S_AIRLOCK_PORT).")
def airlock_command(host: str, port: int | None) -> None:
    """Serve the airlock over TCP to workspace pods (pod-bound tokens)."""
    from spe.config import get_settings
    from spe.workspaces.airlock_tcp import run_tcp_airlock

    settings = get_settings()
    run_tcp_airlock(host, port or settings.k8s_airlock_port, settings.k8s_namespace)
