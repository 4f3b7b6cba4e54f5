"""Starting and stopping workspace sandboxes for real: users, cgroups, seccomp and bwrap.

As root each workspace gets its own unix user and cgroup v1 limits (memory, pids, cpu). Not as
root (development), or without the cgroup file system, all workspaces share the caller's uid and
run without limits; a warning says so once per start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import grp
import hashlib
import logging
import os
import pwd
import signal
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from spe.errors import SPEError
from spe.workspaces.sandbox import SandboxSpec, sandbox_command, sandbox_files
from spe.workspaces.seccomp import seccomp_program

log = logging.getLogger("spe.sandbox")

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
# Workspace uids: one per workspace, derived from its id so that it is the same on every start
# (and on a rebuilt machine), far above the ranges useradd and subuid hand out.
UID_BASE = 2_000_000
UID_SPAN = 1_000_000
USER_PREFIX = "spe-"
# Every sandbox runs with this supplementary group: it may search the folders above the ones a
# sandbox mounts (bwrap needs that), so those can stay closed to everyone else.
SANDBOX_GROUP = "spe-workspaces"

# Joins the cgroups *before* exec'ing bwrap, so that nothing of the sandbox ever runs outside
# them. It runs as the workspace user (subprocess drops privileges in C, which is safe in a
# threaded hub, unlike preexec_fn); the runner delegates each leaf's cgroup.procs to that user.
_JOIN_CGROUPS = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ >"$1" || exit 125; shift; n=$((n - 1)); done; '
    'exec "$@"'
)


class SandboxError(SPEError):
    """A workspace sandbox could not be prepared, started or stopped."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one workspace (cgroup v1)."""

    memory_mb: int
    pids_max: int
    cpus: float

    @classmethod
    def from_settings(cls) -> SandboxLimits:
        from spe.config import get_settings

        s = get_settings()
        return cls(s.workspace_memory_mb, s.workspace_pids_max, s.workspace_cpus)


def _is_root() -> bool:
    return os.geteuid() == 0


# --- per-workspace users ----------------------------------------------------------------------


def user_name(workspace_id: str) -> str:
    """The workspace's unix user: ``spe-`` and a hash (ids are longer than user names may be)."""
    return USER_PREFIX + hashlib.sha256(workspace_id.encode()).hexdigest()[:16]


def _preferred_uid(workspace_id: str) -> int:
    digest = hashlib.sha256(workspace_id.encode()).digest()
    return UID_BASE + int.from_bytes(digest[:8], "big") % UID_SPAN


def _taken(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False


def _shadow_tool(args: list[str], seconds: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run useradd/groupadd/userdel/groupdel, again while another process holds the lock on
    /etc/passwd or /etc/group (they give up at once with "cannot lock ...; try again later"):
    two workspaces starting together, or the hub and the CLI, must both get their users."""
    deadline = time.monotonic() + seconds
    while True:
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        busy = "cannot lock" in result.stderr or "try again later" in result.stderr
        if result.returncode == 0 or not busy or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def workspace_user(workspace_id: str) -> tuple[int, int]:
    """The (uid, gid) of the workspace's own unix user, created on first use (root only)."""
    name = user_name(workspace_id)
    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam(name)
        return entry.pw_uid, entry.pw_gid
    if not _is_root():
        raise SandboxError(
            "Only root can create a workspace's own user; without root all workspaces share "
            "the caller's uid (development only)."
        )
    uid = _preferred_uid(workspace_id)
    while _taken(uid):  # another workspace hashed here: take the next free id
        uid += 1
    # The group first, with gid = uid, so that the group is as stable as the user.
    _shadow_tool(["groupadd", "--system", "--gid", str(uid), name])
    result = _shadow_tool(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--gid",
            name,
            "--uid",
            str(uid),
            "--comment",
            f"SPE workspace {workspace_id}"[:200],
            name,
        ]
    )
    try:
        entry = pwd.getpwnam(name)  # also right when a concurrent start created it first
    except KeyError:
        raise SandboxError(
            f"Could not create the unix user {name} for workspace {workspace_id}: "
            f"{result.stderr.strip() or 'useradd failed'}."
        ) from None
    return entry.pw_uid, entry.pw_gid


def remove_workspace_user(workspace_id: str) -> None:
    """Delete the workspace's unix user (after its sandbox stopped and its files are gone)."""
    name = user_name(workspace_id)
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        _shadow_tool(["userdel", name])
    with contextlib.suppress(KeyError):
        grp.getgrnam(name)
        _shadow_tool(["groupdel", name])


# --- host folders ------------------------------------------------------------------------------


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    """Give a folder and everything in it to the workspace user, never following a link.

    The content was written by researcher code: fwalk on directory fds with lchown cannot be
    steered out of the folder by a symlink, and hard links cannot reach outside it (link(2)
    across the sandbox's mounts fails).
    """
    os.chown(top, uid, gid, follow_symlinks=False)
    for _, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        for name in dirnames + filenames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)


# POSIX ACLs as the kernel stores them (<linux/posix_acl_xattr.h>): set with os.setxattr, so
# no acl package is needed.
_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = (
    0x01,
    0x02,
    0x04,
    0x08,
    0x10,
    0x20,
)
_ACL_UNDEFINED = 0xFFFFFFFF


def _acl_grant_fd(fd: int, tag: int, qualifier: int, perm: int) -> None:
    """Add (or widen) one named entry of a file's access ACL, keeping every other entry."""
    st = os.fstat(fd)
    try:
        raw = os.getxattr(fd, _ACL_XATTR)
        entries = [struct.unpack_from("<HHI", raw, offset) for offset in range(4, len(raw), 8)]
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        mode = st.st_mode
        entries = [
            (_ACL_USER_OBJ, (mode >> 6) & 7, _ACL_UNDEFINED),
            (_ACL_GROUP_OBJ, (mode >> 3) & 7, _ACL_UNDEFINED),
            (_ACL_OTHER, mode & 7, _ACL_UNDEFINED),
        ]
    if any(t == tag and q == qualifier and p & perm == perm for t, p, q in entries):
        return
    entries = [e for e in entries if e[0] != _ACL_MASK and (e[0], e[2]) != (tag, qualifier)]
    entries.append((tag, perm, qualifier))
    # The mask caps every named and group entry: it must cover them all, as setfacl makes it.
    mask = 0
    for t, p, _ in entries:
        if t in (_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP):
            mask |= p
    entries.append((_ACL_MASK, mask, _ACL_UNDEFINED))
    entries.sort(key=lambda e: (e[0], e[2]))  # the kernel wants them in this order
    raw = struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(fd, _ACL_XATTR, raw)


def _acl_error(top: Path, exc: OSError) -> SandboxError:
    if exc.errno == errno.EOPNOTSUPP:
        return SandboxError(
            f"{top} is on a file system without POSIX ACLs, so a workspace's user cannot be "
            "given access to it alone; keep SPE's state folder on ext4, xfs or btrfs."
        )
    return SandboxError(f"Could not give a workspace access to {top} ({exc.strerror}).")


def grant_read(top: Path, uid: int) -> None:
    """Let ``uid`` read a folder tree through a POSIX ACL entry of its own.

    Extract folders are written 0700 by root; an ACL lets exactly this workspace's user read
    them, without opening them to anyone else. Links are not followed.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        for _, _, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
            _acl_grant_fd(dirfd, _ACL_USER, uid, 5)
            for name in filenames:
                try:
                    fd = os.open(name, flags, dir_fd=dirfd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        continue  # a symlink: it grants nothing
                    raise
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        _acl_grant_fd(fd, _ACL_USER, uid, 4)
                finally:
                    os.close(fd)
    except OSError as exc:
        raise _acl_error(top, exc) from None


def grant_search(folder: Path, gid: int) -> None:
    """Let the workspaces' group search (not list) every folder above ``folder``.

    bwrap runs as the workspace's user and resolves each bind source by its path, so it needs
    search permission on every folder above it; a root-only state folder keeps everyone else
    out. Folders that others may already search are left alone.
    """
    for parent in reversed(Path(folder).parents):
        st = os.stat(parent)
        if st.st_mode & stat.S_IXOTH:
            continue
        try:
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _acl_grant_fd(fd, _ACL_GROUP, gid, 1)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _acl_error(parent, exc) from None


def sandbox_group() -> int:
    """The gid of ``spe-workspaces``, the group every sandbox runs in (created as needed)."""
    with contextlib.suppress(KeyError):
        return grp.getgrnam(SANDBOX_GROUP).gr_gid
    subprocess.run(["groupadd", "--system", SANDBOX_GROUP], capture_output=True, check=False)
    try:
        return grp.getgrnam(SANDBOX_GROUP).gr_gid
    except KeyError:
        raise SandboxError(f"Could not create the group {SANDBOX_GROUP} (groupadd).") from None


def _check_source(path: Path) -> None:
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise SandboxError(f"{path} cannot be mounted into a workspace ({exc.strerror}).") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxError(f"{path} cannot be mounted into a workspace: it is not a folder.")


def prepare_host_folders(spec: SandboxSpec) -> None:
    """Create the workspace's writable folders and give its user what it needs on the host.

    As root: home and run belong to the workspace's user (mode 0700), the extracts get a read
    ACL for it, and the workspaces' group may search the folders above every mounted folder.
    """
    for folder in (spec.home, spec.run_dir):
        Path(folder).mkdir(parents=True, exist_ok=True, mode=0o700)
    sources = [spec.env_dir, spec.home, spec.run_dir, spec.airlock_dir, spec.config_dir]
    sources += list(spec.datasets.values())
    for source in sources:
        _check_source(Path(source))
    if not _is_root() or spec.uid is None:
        return
    gid = spec.gid if spec.gid is not None else spec.uid
    for folder in (spec.home, spec.run_dir):
        _chown_tree(Path(folder), spec.uid, gid)
        os.chmod(folder, 0o700)
    for folder in spec.datasets.values():
        grant_read(Path(folder), spec.uid)
    group = sandbox_group()
    for source in sources:
        grant_search(Path(source), group)


# --- cgroups (v1) ------------------------------------------------------------------------------


def _own_cgroup(controller: str) -> str:
    """This process's cgroup in a v1 hierarchy ("/" on a plain host)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                return path
    return "/"


def cgroup_paths(workspace_id: str) -> dict[str, Path]:
    """The workspace's cgroup folder per controller: ``<mount>/<own cgroup>/spe/<id>``.

    Nested under the spawner's own cgroup, which on a plain host is the root (giving
    ``/sys/fs/cgroup/memory/spe/<id>``): under a supervisor the supervisor's limits still bind.
    """
    return {
        c: CGROUP_ROOT / c / _own_cgroup(c).lstrip("/") / "spe" / workspace_id for c in CONTROLLERS
    }


def cgroups_available() -> str | None:
    """None when limits can be enforced here, else why not."""
    if not _is_root():
        return "SPE is not running as root"
    for controller in CONTROLLERS:
        if not (CGROUP_ROOT / controller / "cgroup.procs").is_file():
            return f"the cgroup v1 '{controller}' controller is not mounted at {CGROUP_ROOT}"
    return None


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _kill_members(folder: Path, timeout: float = 5.0) -> None:
    procs = folder / "cgroup.procs"
    deadline = time.monotonic() + timeout
    while procs.exists():
        pids = [int(p) for p in procs.read_text().split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise SandboxError(f"Processes {pids} in {folder} do not die; see `ps` and dmesg.")
        time.sleep(0.02)


def create_cgroups(workspace_id: str, limits: SandboxLimits, uid: int | None) -> list[Path]:
    """Create the workspace's cgroups with its limits; returns the cgroup.procs files to join."""
    paths = cgroup_paths(workspace_id)
    for folder in paths.values():
        if folder.exists():
            _kill_members(folder)  # a sandbox left from a crash: it must not keep running
        folder.mkdir(parents=True, exist_ok=True)
    memory = limits.memory_mb << 20
    mem = paths["memory"]
    memsw = mem / "memory.memsw.limit_in_bytes"
    # memsw (memory + swap) may never be below the memory limit, so the order of the two writes
    # depends on whether the limit grows or shrinks; without swap accounting it is absent.
    try:
        _write(mem / "memory.limit_in_bytes", str(memory))
        if memsw.exists():
            _write(memsw, str(memory))
    except OSError as exc:
        if exc.errno != errno.EINVAL or not memsw.exists():
            raise
        _write(memsw, str(memory))
        _write(mem / "memory.limit_in_bytes", str(memory))
    _write(paths["pids"] / "pids.max", str(limits.pids_max))
    _write(paths["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
    _write(paths["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(limits.cpus * CPU_PERIOD_US))))
    procs = [folder / "cgroup.procs" for folder in paths.values()]
    if uid is not None:
        # Delegation as cgroup v1 knows it: the workspace user may move its own processes into
        # this leaf, and nothing else (the limits stay root's; /sys is not in the sandbox).
        for file in procs:
            os.chown(file, uid, -1)
    return procs


def remove_cgroups(workspace_id: str) -> None:
    """Kill whatever is left in the workspace's cgroups and remove them."""
    if cgroups_available() is not None:
        return
    for folder in cgroup_paths(workspace_id).values():
        if not folder.exists():
            continue
        _kill_members(folder)
        for attempt in range(50):
            try:
                folder.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:  # EBUSY while the last task is being reaped
                if exc.errno != errno.EBUSY or attempt == 49:
                    raise SandboxError(f"Could not remove {folder} ({exc.strerror}).") from None
                time.sleep(0.02)
        with contextlib.suppress(OSError):  # the shared "spe" folder, once no workspace is left
            folder.parent.rmdir()


# --- start and stop ----------------------------------------------------------------------------


def _data_fd(name: str, content: bytes) -> int:
    """An anonymous in-memory file holding ``content``, at offset 0 (bwrap reads to EOF)."""
    fd = os.memfd_create(f"spe-{name}", os.MFD_CLOEXEC)
    try:
        os.write(fd, content)  # memfd writes are not partial
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _fds() -> Iterator[list[int]]:
    opened: list[int] = []
    try:
        yield opened
    finally:
        for fd in opened:
            with contextlib.suppress(OSError):
                os.close(fd)


def start_sandbox(
    spec: SandboxSpec,
    limits: SandboxLimits | None = None,
    *,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the sandbox described by ``spec``; returns the bwrap process.

    As root the sandbox runs as ``spec.uid`` (see :func:`workspace_user`), which must be set:
    researcher code is never run as root, not even root inside a user namespace. Limits default
    to the settings; they are skipped, with a warning, where cgroups cannot be used.
    """
    root = _is_root()
    if root and not spec.uid:
        raise SandboxError(
            f"Workspace {spec.workspace_id} has no user of its own; as root SPE runs each "
            "workspace as its own user (workspace_user())."
        )
    prepare_host_folders(spec)
    limits = limits or SandboxLimits.from_settings()
    why_not = cgroups_available()
    procs: list[Path] = []
    if why_not is None:
        procs = create_cgroups(spec.workspace_id, limits, spec.uid if root else None)
    else:
        log.warning(
            "workspace %s runs WITHOUT memory, process or CPU limits: %s",
            spec.workspace_id,
            why_not,
        )
    if not root:
        log.warning(
            "workspace %s shares the uid %d of the spawner with every other workspace "
            "(only root gives each workspace its own user)",
            spec.workspace_id,
            os.getuid(),
        )
    try:
        with _fds() as opened:
            seccomp_fd = _data_fd("seccomp", seccomp_program(inet=spec.inet_loopback))
            opened.append(seccomp_fd)
            file_fds = {}
            for path, content in sandbox_files(spec).items():
                file_fds[path] = _data_fd(path.rsplit("/", 1)[-1], content)
                opened.append(file_fds[path])
            ready = dataclasses.replace(spec, seccomp_fd=seccomp_fd, file_fds=file_fds)
            argv = sandbox_command(ready)
            # The options go through a file, not the command line: the sandbox's init is bwrap,
            # and its /proc/1/cmdline (and the host's `ps`) would show every host path and
            # variable value. bwrap reads NUL-separated options with --args; the command itself
            # (from the "--" on) it takes only from its argv.
            split = len(argv) - len(spec.command) - 1
            options = argv[1:split]
            args_fd = _data_fd("args", b"".join(a.encode() + b"\0" for a in options))
            opened.append(args_fd)
            argv = [argv[0], "--args", str(args_fd), *argv[split:]]
            if procs:
                argv = (
                    ["/bin/sh", "-c", _JOIN_CGROUPS, "spe-sandbox", str(len(procs))]
                    + [str(p) for p in procs]
                    + argv
                )
            user: dict[str, Any] = {}
            if root and spec.uid is not None:
                gid = spec.gid if spec.gid is not None else spec.uid
                user = {"user": spec.uid, "group": gid, "extra_groups": [sandbox_group()]}
            return subprocess.Popen(
                argv,
                pass_fds=[*opened, *spec.pass_fds],
                # bwrap itself needs nothing from the hub's environment either.
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                cwd="/",
                umask=0o077,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                **user,
            )
    except BaseException:
        if procs:
            remove_cgroups(spec.workspace_id)
        raise


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def stop_sandbox(
    process: subprocess.Popen[bytes], workspace_id: str, timeout: float = 10.0
) -> int | None:
    """Stop a sandbox and remove its cgroups; returns bwrap's exit status.

    The sandbox's init (bwrap's child) is killed, which ends everything in its pid namespace;
    bwrap then reaps it and exits. Killing bwrap first would leave its child for the host's
    init to reap. Whatever is still in the cgroups after ``timeout`` is killed there.
    """
    if process.poll() is None:
        for child in _children(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    remove_cgroups(workspace_id)
    return process.returncode
