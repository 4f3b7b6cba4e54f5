"""Kernel code against the notebook server and the mount table, from inside a real sandbox.

The kernel runs under the same uid as the notebook server that records its cells. These tests
try, as kernel code would, to read or patch the server's memory (/proc/<pid>/mem,
process_vm_writev, ptrace), to make it dump core into the home folder, to plant a module the
server imports, to restart it with other code, and to read host paths off the mount table.
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from spe.config import get_settings
from spe.workspaces import sandbox_run
from spe.workspaces.sandbox_run import stop_sandbox
from spe.workspaces.seccomp import DENIED

if TYPE_CHECKING:
    from tests.security.conftest import Sandboxes, Workspace

pytestmark = pytest.mark.security

ARCH = 0 if __import__("platform").machine() == "x86_64" else 1
NR = {name: numbers[ARCH] for name, numbers in DENIED.items() if numbers[ARCH] is not None}

# The stand-in for the notebook server: what spe.workspaces.serve does first, with a secret in
# its memory whose address it prints for the attacker.
SERVER = r"""
import ctypes, sys, time
import spe.workspaces.serve as serve
serve.harden_process()
secret = ctypes.create_string_buffer(b"execute_request" * 4)
print(ctypes.addressof(secret), flush=True)
time.sleep(60)
"""

ATTACK = r"""
import resource, signal, subprocess, time
# As high as the sandbox allows, so that only the server's own hardening can stop a core file.
_, hard = resource.getrlimit(resource.RLIMIT_CORE)
resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
server = subprocess.Popen([sys.executable, "-I", "-c", HOST["server"]], stdout=subprocess.PIPE,
                          cwd="/home/researcher")
address = int(server.stdout.readline())
pid = server.pid
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
mine = ctypes.create_string_buffer(b"patched_request" * 4)
def vm(name):
    local = iovec(ctypes.addressof(mine), 16)
    remote = iovec(address, 16)
    nr = HOST["nr"][name]
    return syscall(nr, pid, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
def mem(mode):
    with open(f"/proc/{pid}/mem", mode) as f:
        f.seek(address)
        return f.read(16) if mode == "rb" else f.write(b"patched_request!")
attempt("proc mem read", mem, "rb")
attempt("proc mem write", mem, "r+b")
attempt("proc environ", read, f"/proc/{pid}/environ")
attempt("process_vm_readv", vm, "process_vm_readv")
attempt("process_vm_writev", vm, "process_vm_writev")
def ptrace_attach():
    if libc.ptrace(16, pid, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "ptrace")
    return "attached"
attempt("ptrace attach", ptrace_attach)
attempt("dumpable server", lambda: open(f"/proc/{pid}/status").read())
os.kill(pid, signal.SIGSEGV)  # a core file would land in its working directory
server.wait(10)
R["server signal"] = -server.returncode
R["core files"] = [os.path.join(d, f) for d in ("/home/researcher", "/tmp", "/")
                   for f in os.listdir(d) if f.startswith("core")]
"""


def _memory_attack(sandboxes: Sandboxes, ws: Workspace) -> dict[str, Any]:
    return sandboxes.run(ws, ATTACK, {"server": SERVER, "nr": NR}, timeout=60)


def test_kernel_code_cannot_read_or_patch_the_servers_memory_nor_make_it_dump_core(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = _memory_attack(sandboxes, alice)
    for name in ("proc mem read", "proc mem write", "proc environ", "dumpable server"):
        assert report[name]["ok"] is False and report[name]["errno"] == "ENOENT", report[name]
    for name in ("process_vm_readv", "process_vm_writev", "ptrace attach"):
        assert report[name]["ok"] is False and report[name]["errno"] == "EPERM", report[name]
    assert report["server signal"] == 11
    assert report["core files"] == []


def test_without_seccomp_the_non_dumpable_server_still_refuses_memory_access_and_core_dumps(
    sandboxes: Sandboxes,
    two_workspaces: tuple[Workspace, Workspace],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth: with an allow-all filter, PR_SET_DUMPABLE 0 alone refuses ptrace and
    process_vm_* (the kernel wants CAP_SYS_PTRACE for a non-dumpable target) and writes no core."""
    alice, _ = two_workspaces
    allow_all = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)
    monkeypatch.setattr(sandbox_run, "seccomp_program", lambda **_: allow_all)
    report = _memory_attack(sandboxes, alice)
    for name in ("process_vm_readv", "process_vm_writev", "ptrace attach"):
        assert report[name]["ok"] is False and report[name]["errno"] == "EPERM", report[name]
    assert report["core files"] == []


def test_the_mount_table_shows_no_host_path_nor_internal_id(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
attempt("mountinfo", read, "/proc/self/mountinfo")
attempt("mounts", read, "/proc/mounts")
attempt("listmount", syscall, HOST["nr"]["listmount"], 0, 0, 0, 0)
attempt("statmount", syscall, HOST["nr"]["statmount"], 0, 0, 0, 0)
attempt("data", listdir, "/data")
attempt("cwd", os.getcwd)
""",
        {"nr": NR},
    )
    for name in ("mountinfo", "mounts"):
        assert report[name]["ok"] is False and report[name]["errno"] == "ENOENT", report[name]
    for name in ("listmount", "statmount"):
        assert report[name]["ok"] is False and report[name]["errno"] == "EPERM", report[name]
    assert report["data"]["value"] == ["income"] and report["cwd"]["value"] == "/home/researcher"
    # Nothing the sandbox could read names the state folder, the project or the extract version.
    text = json.dumps(report)
    for host in (str(sandboxes.state), "escape-a", "extracts", "/v1"):
        assert host not in text, host


PLANTED = "open('/home/researcher/planted-code-ran', 'w').write('{name}')\n"


def _server_start(sandboxes: Sandboxes, ws: Workspace, argv: list[str], env: dict[str, str]) -> str:
    """Start a notebook server command in ``ws`` and let it run until it gives up (no hub)."""
    process = sandboxes.start(ws, argv, env=env)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        stop_sandbox(process, ws.id)
    return err.decode(errors="replace")


def test_a_module_planted_in_the_home_is_not_imported_by_the_notebook_server(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    """The real server command (from server_launch), restarted after kernel code planted modules
    it imports at start in the home folder, its working directory inside the sandbox."""
    from spe.workspaces.spawner import WorkspacePlan, server_launch

    alice, _ = two_workspaces
    marker = alice.paths.home / "planted-code-ran"
    for name in ("ctypes", "tornado", "sitecustomize", "usercustomize", "jupyter_server_config"):
        (alice.paths.home / f"{name}.py").write_text(PLANTED.format(name=name))
    plan = WorkspacePlan(alice.project, alice.user, alice.paths, alice.datasets)
    launch = server_launch(plan, {"JUPYTERHUB_SERVICE_PREFIX": "/"}, get_settings())
    assert launch.argv[1] == "-I" and launch.argv[2:4] == ["-m", "spe.workspaces.serve"]
    env = {k: v for k, v in launch.env.items() if k not in ("HOME", "PATH", "USER")}
    err = _server_start(sandboxes, alice, launch.argv, env)
    assert not marker.exists(), err[-2000:]
    assert "planted" not in err

    # The control: the same command without -I imports a planted module from the home (ctypes,
    # which serve.py imports before it can take the home out of sys.path).
    without = [a for a in launch.argv if a != "-I"]
    _server_start(sandboxes, alice, without, env)
    assert marker.exists() and marker.read_text() == "ctypes"


def test_killing_the_server_ends_the_whole_sandbox_so_nothing_can_take_its_place(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    """The server is the sandbox's first process: a kernel that kills it to start a server of
    its own goes down with it."""
    alice, _ = two_workspaces
    survivor = r"""
import os, signal, socket, time
os.kill(os.getppid(), signal.SIGKILL)
time.sleep(3)
open("/home/researcher/survived", "w").write("a kernel outlived its server")
"""
    program = sandboxes.program(
        "import subprocess, time\n"
        f"subprocess.Popen([sys.executable, '-c', {survivor!r}])\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    process = sandboxes.start(alice, program)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the sandbox outlived its first process")
    finally:
        stop_sandbox(process, alice.id)
    time.sleep(4)
    assert time.monotonic() - started < 30
    assert not (alice.paths.home / "survived").exists()
