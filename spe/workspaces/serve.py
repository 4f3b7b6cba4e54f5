"""The notebook server of a workspace: JupyterHub's single-user server, listening on a socket
the spawner made outside the sandbox and handed over as an open file descriptor.

The socket's folder is read-only inside the sandbox, so code in the workspace can neither
remove the socket nor bind a server of its own in its place.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from jupyter_server.serverapp import ServerApp
from jupyterhub.singleuser.extension import JupyterHubSingleUser

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


def main(argv: Any = None) -> None:
    # The extension keeps its own class (jupyter_server finds it through the jupyterhub
    # package's extension points); only the server application under it is ours.
    JupyterHubSingleUser.serverapp_class = InheritedSocketServerApp
    JupyterHubSingleUser.launch_instance(argv)


if __name__ == "__main__":
    main()
