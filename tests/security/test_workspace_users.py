"""A workspace's unix user is created even while another process holds the password file's lock
(two workspaces starting together, or the hub and the CLI): useradd gives up at once with "try
again later", so SPE tries again. Needs root (it creates a real user), as the sandboxes do."""

from __future__ import annotations

import os
import pwd
import threading
import time
from pathlib import Path

import pytest

from spe.workspaces.sandbox_run import remove_workspace_user, user_name, workspace_user

LOCK = Path("/etc/passwd.lock")


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a workspace's unix user needs root")
def test_a_workspace_user_is_created_after_the_password_file_lock_is_released() -> None:
    workspace = "locked-study--researcher"
    remove_workspace_user(workspace)
    # shadow's own lock file, as useradd and passwd write it: the pid of a live process.
    fd = os.open(LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    released = threading.Timer(1.0, LOCK.unlink)
    released.start()
    started = time.monotonic()
    try:
        uid, gid = workspace_user(workspace)
        waited = time.monotonic() - started
        assert pwd.getpwnam(user_name(workspace)).pw_uid == uid == gid
        assert waited >= 0.9  # it really waited for the lock, and got the user after it
    finally:
        released.join()
        LOCK.unlink(missing_ok=True)
        remove_workspace_user(workspace)
    with pytest.raises(KeyError):
        pwd.getpwnam(user_name(workspace))
