"""The exact bubblewrap command line of a workspace sandbox, built by pure functions.

:func:`sandbox_command` turns a :class:`SandboxSpec` into bwrap's argv; :func:`sandbox_files` gives
the few generated ``/etc`` files. Nothing here touches the system: ``sandbox_run`` does that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spe.workspaces.layout import AIRLOCK, CONFIG, DATA, HOME, OUTBOX, RUN
from spe.workspaces.seccomp import seccomp_program

__all__ = [
    "SandboxSpec",
    "sandbox_command",
    "sandbox_environment",
    "sandbox_files",
    "seccomp_program",
]

BWRAP = "/usr/bin/bwrap"  # absolute: the hub's PATH must not choose the sandbox program
HOSTNAME = "workspace"
USERNAME = "researcher"
NOBODY = 65534  # the kernel's overflow id: files of unmapped owners show as nobody/nogroup
TMP_BYTES = 1 << 30

# SPE settings a workspace may be given: where things are *inside* the sandbox. Every other SPE_
# variable names a host path or a secret (database URL, platform key, state folder) and is
# refused, so a careless caller cannot leak one into researcher code.
WORKSPACE_SPE_VARIABLES = frozenset(
    {
        "SPE_OUTBOX_DIR",
        "SPE_WORKSPACE_DATA_DIR",
        "SPE_POLICIES_DIR",
        "SPE_KERNEL_PYTHON",
        "SPE_SERVER_FD",  # the number of the inherited listening socket
    }
)
# Set by the builder from the layout; a caller may not point them elsewhere.
FIXED_VARIABLES = frozenset({"HOME", "PATH", "USER", "LOGNAME"})

_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SandboxSpec:
    """Everything one workspace sandbox is made of; host paths are absolute."""

    workspace_id: str
    home: Path  # read-write at layout.HOME
    datasets: Mapping[str, Path]  # dataset name -> extract folder, read-only at layout.DATA/<name>
    # Read-only at layout.RUN: the notebook server's socket (made outside, handed over as an fd,
    # so code in the workspace can neither remove it nor put its own server in its place).
    run_dir: Path
    airlock_dir: Path  # read-only at layout.AIRLOCK: the workspace's own airlock socket
    config_dir: Path  # read-only at layout.CONFIG
    env_dir: Path  # the workspaces' Python environment, read-only at its own path
    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    uid: int | None = None  # the sandbox's user (inside and, via the runner, on the host)
    gid: int | None = None
    seccomp_fd: int | None = None  # a readable fd holding seccomp.seccomp_program()
    # Filled by the runner: fds holding sandbox_files() content, keyed by path inside.
    file_fds: Mapping[str, int] = field(default_factory=dict)
    tmp_bytes: int = TMP_BYTES  # size of the sandbox's own /tmp (memory, charged to its cgroup)
    # TCP/UDP sockets on the sandbox's own, empty loopback (ipykernel needs them; see
    # seccomp.seccomp_program). False: AF_UNIX sockets only.
    inet_loopback: bool = True
    # Open fds the sandbox inherits (the notebook server's listening socket).
    pass_fds: tuple[int, ...] = ()


def sandbox_environment(spec: SandboxSpec) -> dict[str, str]:
    """The sandbox's whole environment: fixed variables from the layout plus the spec's."""
    env = {
        "HOME": str(HOME),
        "USER": USERNAME,
        "LOGNAME": USERNAME,
        # Only the workspace env and the system: never the hub's virtualenv.
        "PATH": f"{spec.env_dir}/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",  # noqa: S108 - the sandbox's own tmpfs
        "SPE_OUTBOX_DIR": str(OUTBOX),
        "SPE_WORKSPACE_DATA_DIR": str(DATA),
    }
    for name, value in spec.env.items():
        if not _VARIABLE.match(name) or "\0" in value:
            raise ValueError(f"{name!r} cannot be passed into a workspace")
        if name in FIXED_VARIABLES:
            raise ValueError(f"{name} is fixed by the sandbox layout; do not set it")
        if name.startswith("SPE_") and name not in WORKSPACE_SPE_VARIABLES:
            raise ValueError(
                f"{name} may not enter a workspace: it is not one of the workspace's own "
                f"settings ({', '.join(sorted(WORKSPACE_SPE_VARIABLES))}); SPE settings name "
                "host paths and secrets"
            )
        env[name] = value
    return env


def sandbox_files(spec: SandboxSpec) -> dict[str, bytes]:
    """Generated ``/etc`` files, by path inside: the host's own would list its users and groups."""
    users = ["root:x:0:0:root:/root:/usr/sbin/nologin"]
    groups = ["root:x:0:"]
    if spec.uid is not None:
        gid = spec.gid if spec.gid is not None else spec.uid
        users.append(f"{USERNAME}:x:{spec.uid}:{gid}:{USERNAME}:{HOME}:/bin/bash")
        groups.append(f"{USERNAME}:x:{gid}:")
    users.append(f"nobody:x:{NOBODY}:{NOBODY}:nobody:/nonexistent:/usr/sbin/nologin")
    groups.append(f"nogroup:x:{NOBODY}:")
    return {
        "/etc/passwd": ("\n".join(users) + "\n").encode(),
        "/etc/group": ("\n".join(groups) + "\n").encode(),
        # Only local files: the host's may name sss/systemd/LDAP modules that would try to reach
        # daemons the sandbox cannot see.
        "/etc/nsswitch.conf": b"passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
        "/etc/hosts": f"127.0.0.1 localhost {HOSTNAME}\n::1 localhost\n".encode(),
    }


def _check(spec: SandboxSpec) -> None:
    paths = [spec.home, spec.run_dir, spec.airlock_dir, spec.config_dir, spec.env_dir]
    for path in [*paths, *spec.datasets.values()]:
        if not Path(path).is_absolute():
            raise ValueError(f"{path} is not an absolute host path")
    for name in spec.datasets:
        # A name becomes a path under /data: '..' or '/' would mount it elsewhere.
        if not _DATASET.match(name) or ".." in name:
            raise ValueError(f"{name!r} cannot name a dataset folder in a workspace")
    if not spec.command:
        raise ValueError("a sandbox needs a command to run")
    if spec.uid == 0 or spec.gid == 0:
        raise ValueError("a workspace never runs as root")


def _bind(source: Path, dest: Path, *, writable: bool) -> list[str]:
    # By path: bwrap resolves even an fd source back to its path (realpath), so an fd would
    # bypass nothing; the runner makes the folders above each source searchable instead.
    return ["--bind" if writable else "--ro-bind", str(source), str(dest)]


def sandbox_command(spec: SandboxSpec) -> list[str]:
    """bwrap's argv for ``spec``; bwrap applies its options in this order."""
    _check(spec)
    argv = [
        BWRAP,
        # Every namespace: user, ipc, pid, net (nothing but a loopback), uts, cgroup.
        "--unshare-all",
        # Explicit, not the "-try" that --unshare-all implies: never run without a user namespace.
        "--unshare-user",
        # Nested user namespaces would hand researcher code every capability inside them.
        "--disable-userns",
        # The sandbox must not outlive the spawner that tracks it.
        "--die-with-parent",
        # setsid(): no TIOCSTI injection into a terminal the sandbox was started from.
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        HOSTNAME,
        # Nothing of the hub's environment (SPE_ secrets, tokens) leaks in.
        "--clearenv",
    ]
    for name, value in sandbox_environment(spec).items():
        argv += ["--setenv", name, value]
    # A minimal read-only root. Debian merges /bin, /lib... into /usr, so the symlinks suffice.
    argv += ["--ro-bind", "/usr", "/usr"]
    for link in ("lib", "lib64", "bin", "sbin"):
        argv += ["--symlink", f"usr/{link}", f"/{link}"]
    # The dynamic linker's cache (speed only) and the time zone: nothing secret; "-try" because
    # a host may lack either.
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    argv += ["--ro-bind-try", "/etc/localtime", "/etc/localtime"]
    for path in sandbox_files(spec):
        fd = spec.file_fds.get(path)
        if fd is not None:
            argv += ["--perms", "0444", "--ro-bind-data", str(fd), path]
    # No procfs at all, not even the sandbox's own: its mountinfo names every bind source by its
    # host path (the kernel prints a bind's root relative to its file system, which no mount
    # option hides), and /proc/<pid>/{mem,fd,environ} of the notebook server are a way into the
    # process that records cells. A minimal /dev (null, zero, full, random, urandom, tty, pts,
    # shm); no /sys either.
    argv += ["--dev", "/dev"]
    # Shared memory (multiprocessing's semaphores) on a tmpfs of its own, so that /dev itself
    # can be made read-only below.
    argv += ["--size", str(spec.tmp_bytes), "--tmpfs", "/dev/shm"]  # noqa: S108
    argv += ["--size", str(spec.tmp_bytes), "--tmpfs", "/tmp"]  # noqa: S108 - its own
    # At its own path: the venv's scripts and pyvenv.cfg name it absolutely.
    argv += _bind(spec.env_dir, spec.env_dir, writable=False)
    argv += _bind(spec.home, HOME, writable=True)
    argv += ["--dir", str(DATA)]  # present even with no dataset, as spe.analysis expects
    for name in sorted(spec.datasets):
        argv += _bind(spec.datasets[name], DATA / name, writable=False)
    argv += _bind(spec.run_dir, RUN, writable=False)
    argv += _bind(spec.airlock_dir, AIRLOCK, writable=False)
    argv += _bind(spec.config_dir, CONFIG, writable=False)
    # Last: the root tmpfs bwrap built and /dev hold only mount points and device nodes;
    # nothing may be written there (not recursive: /dev/shm, /tmp and the binds keep theirs).
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    argv += ["--chdir", str(HOME)]
    if spec.uid is not None:
        argv += ["--uid", str(spec.uid)]
    if spec.gid is not None or spec.uid is not None:
        argv += ["--gid", str(spec.gid if spec.gid is not None else spec.uid)]
    if spec.seccomp_fd is not None:
        argv += ["--seccomp", str(spec.seccomp_fd)]
    return [*argv, "--", *spec.command]
