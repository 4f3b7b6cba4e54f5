"""`spe k8s`: provision a project on the cluster, remove it, and serve the TCP airlock."""

from __future__ import annotations

from pathlib import Path
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


@k8s.command("front-door")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on.")
@click.option(
    "--upstream",
    default="proxy-public:80",
    show_default=True,
    help="HOST:PORT of the hub's proxy (z2jh's proxy-public service).",
)
@click.option(
    "--folder",
    type=click.Path(path_type=Path),
    default=Path("/tmp/front-door"),  # noqa: S108 - the pod's own emptyDir
    show_default=True,
    help="Configuration, temporary files and the request log.",
)
def front_door_command(port: int, upstream: str, folder: Path) -> None:
    """Serve the download filter before the hub's proxy (the same nginx rules as `spe up`),
    and ship the notebook contents reads it logs into the audit log."""
    import signal
    import time

    from spe.workspaces.front_door import FrontDoor, ship_reads, start

    host, _, upstream_port = upstream.rpartition(":")
    if not host or not upstream_port.isdigit():
        raise click.BadParameter("use HOST:PORT", param_hint="--upstream")
    door = FrontDoor(
        listen_port=port,
        upstream_port=int(upstream_port),
        folder=folder,
        access_log=folder / "access.jsonl",
        error_log=folder / "error.log",
        listen_host="0.0.0.0",  # noqa: S104 - the pod's address; the Service is in front
        upstream_host=host,
    )
    folder.mkdir(parents=True, exist_ok=True)
    nginx = start(door)
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"Front door on :{port} before {upstream}.")
    try:
        while not stopping and nginx.poll() is None:
            ship_reads(door.access_log, folder / "shipped-offset")
            time.sleep(1.0)
    finally:
        if nginx.poll() is None:
            nginx.terminate()
            nginx.wait(10)
        ship_reads(door.access_log, folder / "shipped-offset")
    if not stopping:
        raise SystemExit(f"nginx ended with status {nginx.returncode}; see {door.error_log}.")
