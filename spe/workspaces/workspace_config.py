"""The read-only configuration every workspace runs with (mounted at layout.CONFIG).

It makes the notebook server record cells through the airlock, allow only SPE's kernel (which
loads the cell-audit extension), and turn off terminals. The researcher cannot change it: it
is outside the home folder, read-only, and the environment points Jupyter and IPython at it.
"""

from __future__ import annotations

import json
from pathlib import Path

from spe.workspaces.layout import CONFIG

KERNEL = "spe"
MIGRATED_MARKER = "migrated"  # jupyter_core.application.JupyterApp.migrate_config's marker


def workspace_environment(env_python: str) -> dict[str, str]:
    """Variables that point Jupyter and IPython at the read-only configuration."""
    return {
        "JUPYTER_CONFIG_DIR": str(CONFIG / "jupyter"),
        "JUPYTER_CONFIG_PATH": str(CONFIG / "jupyter"),
        "JUPYTER_DATA_DIR": str(CONFIG / "data"),
        "JUPYTER_PATH": str(CONFIG / "data"),
        "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",  # noqa: S108 - the sandbox's own /tmp
        "IPYTHONDIR": str(CONFIG / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "SPE_KERNEL_PYTHON": env_python,
    }


def server_config() -> dict[str, object]:
    return {
        "ServerApp": {
            "kernel_websocket_connection_class": "spe.workspaces.cell_audit.AuditedConnection",
            "contents_manager_class": "spe.workspaces.server_files.WorkspaceContents",
            "terminals_enabled": False,
            "open_browser": False,
            # Installed with JupyterLab, of no use here: language servers (none installed),
            # terminals (disabled above), classic-notebook compatibility.
            "jpserver_extensions": {
                "jupyter_lsp": False,
                "jupyter_server_terminals": False,
                "notebook_shim": False,
            },
        },
        # Only SPE's kernel: a kernel spec written into the home folder is never offered.
        "KernelSpecManager": {"allowed_kernelspecs": [KERNEL], "ensure_native_kernel": False},
        "MappingKernelManager": {"default_kernel_name": KERNEL},
        "ContentsManager": {"allow_hidden": False},
        # The notebook trust database would be written into the read-only data folder.
        "NotebookNotary": {"db_file": ":memory:", "secret_file": "/tmp/notebook_secret"},  # noqa: S108
        # No downloads or nbconvert from the server itself (the front door filters them too).
        "FileContentsManager": {"delete_to_trash": False},
    }


def write_config_dir(target: Path, env_python: str) -> Path:
    """Write the configuration folder (idempotent); the caller mounts it read-only."""
    jupyter = target / "jupyter"
    kernel = target / "data" / "kernels" / KERNEL
    profile = target / "ipython" / "profile_default"
    for folder in (jupyter, kernel, profile):
        folder.mkdir(parents=True, exist_ok=True)
    (jupyter / "jupyter_server_config.json").write_text(json.dumps(server_config(), indent=2))
    (kernel / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    env_python,
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                    "--ext=spe.workspaces.cell_audit",
                ],
                "display_name": "Python 3 (SPE)",
                "language": "python",
                "env": {"IPYTHONDIR": str(CONFIG / "ipython")},
            },
            indent=2,
        )
    )
    (profile / "ipython_kernel_config.py").write_text(
        "# Written by SPE; read-only inside the workspace.\n"
        "c.InteractiveShellApp.extensions = ['spe.workspaces.cell_audit']\n"
        "c.HistoryManager.enabled = False  # the profile folder is read-only\n"
    )
    (profile / "ipython_config.py").write_text(
        "c.InteractiveShellApp.extensions = ['spe.workspaces.cell_audit']\n"
        "c.HistoryManager.enabled = False\n"
    )
    # jupyter_core migrates IPython 3 settings once and records it in this marker; without it
    # every Jupyter application (the notebook server too) tries to write the marker into the
    # config folder at start, and dies on a read-only one (Errno 30, the pod's read-only root).
    (jupyter / MIGRATED_MARKER).write_text("written by SPE: nothing to migrate\n")
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    target.chmod(0o755)
    return target
