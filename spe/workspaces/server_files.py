"""The notebook server's file access inside a workspace: text only, size-capped reads and uploads.

The front door refuses the download routes; this is the second wall, in the workspace's own
server (whose code and configuration the researcher cannot change).
"""

from __future__ import annotations

import functools
import os
from typing import Any

MAX_READ_BYTES = 2 << 20  # a file shown in the browser; larger ones are summarised in a notebook
MAX_UPLOAD_BYTES = 2 << 20


@functools.cache
def _contents_manager_class() -> type:
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
    from tornado import web

    class WorkspaceContents(AsyncLargeFileManager):
        """Files as the browser sees them: text only (no base64 copies of binary files), at most
        MAX_READ_BYTES per read, uploads at most MAX_UPLOAD_BYTES. The front door refuses the
        same routes; this is the second wall, inside the workspace's own server."""

        async def get(
            self,
            path: str,
            content: bool = True,
            type: str | None = None,
            format: str | None = None,
            require_hash: bool = False,
        ) -> Any:
            if content and format == "base64":
                raise web.HTTPError(403, "Binary files cannot be opened in the browser here.")
            if content and type != "directory":
                os_path = self._get_os_path(path.strip("/"))
                if os.path.isfile(os_path) and os.path.getsize(os_path) > MAX_READ_BYTES:
                    raise web.HTTPError(
                        413,
                        f"{path} is larger than {MAX_READ_BYTES >> 20} MiB; look at it in a "
                        "notebook (a summary, not the whole file).",
                    )
            model = await super().get(path, content, type, format, require_hash)
            if content and isinstance(model, dict) and model.get("format") == "base64":
                raise web.HTTPError(403, "Binary files cannot be opened in the browser here.")
            return model

        async def save(self, model: dict[str, Any], path: str = "") -> Any:
            body = model.get("content")
            if model.get("format") == "base64" or (
                isinstance(body, str)
                and len(body) > MAX_UPLOAD_BYTES
                and model.get("type") == "file"
            ):
                raise web.HTTPError(
                    413, "Uploading files into a workspace is limited to small text files."
                )
            return await super().save(model, path)

    return WorkspaceContents


def __getattr__(name: str) -> Any:
    # Named in the server config as spe.workspaces.server_files.WorkspaceContents.
    if name == "WorkspaceContents":
        return _contents_manager_class()
    raise AttributeError(name)
