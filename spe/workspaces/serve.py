"""The notebook server of a workspace: JupyterHub's single-user server, listening on a socket
the spawner made outside the sandbox and handed over as an open file descriptor.

The socket's folder is read-only inside the sandbox, so code in the workspace can neither
remove the socket nor bind a server of its own in its place; the process makes itself
untouchable by the kernels it starts (:func:`harden_process`) before it imports Jupyter.
"""

from __future__ import annotations

import ctypes
import os
import resource
import socket
import sys
from typing import Any

PR_SET_DUMPABLE = 4


def harden_process(home: str | None = None) -> None:
    """Keep the kernels (same uid, started by this process) out of the server.

    Not dumpable: no core file of its memory (the kernel could send it SIGSEGV; core files land
    in the working directory), and without CAP_SYS_PTRACE nobody may ptrace it, read or write
    its memory (process_vm_*, /proc/<pid>/mem) or open its /proc files; the sandbox has no
    procfs and seccomp refuses those calls as well. No entry of ``sys.path`` lies in the writable
    home, so a module planted there is never imported (the spawner starts it with ``python -I``,
    which leaves the working directory out). The working directory stays the home: kernels
    started without a notebook path inherit it, and Jupyter reads no configuration from it.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    home = home or os.environ.get("HOME") or ""
    sys.path[:] = [
        p
        for p in sys.path
        if p and not (home and (p == home or p.startswith(home.rstrip("/") + "/")))
    ]


if __name__ == "__main__":
    harden_process()

# Before jupyter_server is imported: it imports jsonschema (through jupyter_events), which imports
# rfc3987_syntax, when installed, for its "iri" format checker, and that import compiles ~35 Lark
# grammars: over a second of every workspace start, and memory for good. No Jupyter schema uses
# the format; with the module unimportable, jsonschema leaves the format unchecked. Only this
# server process is affected, not the kernels.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

from jupyter_server.serverapp import ServerApp  # noqa: E402
from jupyterhub.singleuser.extension import JupyterHubSingleUser  # noqa: E402

SERVER_FD = "SPE_SERVER_FD"


class InheritedSocketServerApp(ServerApp):
    """Serves on the listening unix socket whose descriptor is in $SPE_SERVER_FD."""

    def _bind_http_server_unix(self) -> bool:
        fd = os.environ.get(SERVER_FD)
        if not fd:
            return bool(super()._bind_http_server_unix())
        listener = socket.socket(fileno=int(fd))
        listener.setblocking(False)
        self.http_server.add_socket(listener)
        return True


def _skip_yarn_config() -> None:
    """jupyterlab.labapp asks `node yarn.js config` for the npm registry as it is imported: a
    node process at every workspace start (0.4 s, where node is installed). A workspace never
    builds JupyterLab or installs extensions, so the answer is never used."""
    try:
        from jupyterlab import commands
    except ImportError:  # an environment without JupyterLab
        return
    commands._yarn_config = lambda logger=None: {"yarn config": {}, "npm config": {}}


def main(argv: Any = None) -> None:
    _skip_yarn_config()
    # The extension keeps its own class (jupyter_server finds it through the jupyterhub
    # package's extension points); only the server application under it is ours.
    JupyterHubSingleUser.serverapp_class = InheritedSocketServerApp
    JupyterHubSingleUser.launch_instance(argv)


if __name__ == "__main__":
    main()
