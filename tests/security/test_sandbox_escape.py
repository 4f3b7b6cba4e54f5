"""Escape attempts from a real workspace sandbox: each one must fail.

Every test starts bubblewrap through ``start_sandbox`` with a small program in the workspace env
that tries something a hostile researcher would, reports each try as JSON, and the test asserts
the try failed (and, where it matters, failed for the right reason).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from spe.exports.errors import ExportInputError
from spe.exports.files import copy_file, open_outbox
from spe.workspaces import sandbox_run
from spe.workspaces.sandbox_run import SandboxLimits, cgroup_paths, stop_sandbox
from spe.workspaces.seccomp import CLONE, DENIED, PERSONALITY

if TYPE_CHECKING:
    from tests.security.conftest import Sandboxes, Workspace

pytestmark = pytest.mark.security

ARCH = 0 if platform.machine() == "x86_64" else 1
NR = {name: numbers[ARCH] for name, numbers in DENIED.items() if numbers[ARCH] is not None}
NR.update(clone=CLONE[ARCH], personality=PERSONALITY[ARCH])
HOST_PORTS = [5432, 6379, 8000, 8001, 8040, 8081]  # PostgreSQL, Redis, hub, proxy, API, hub API
REPO = Path(__file__).resolve().parents[2]


def failed(report: dict[str, Any], *names: str, errnos: tuple[str, ...] = ()) -> None:
    """Each named try failed (with one of ``errnos`` when given)."""
    for name in names:
        entry = report[name]
        assert entry["ok"] is False, f"{name!r} succeeded inside the sandbox: {entry}"
        if errnos:
            assert entry.get("errno") in errnos, f"{name!r} failed, but not as expected: {entry}"


def succeeded(report: dict[str, Any], *names: str) -> None:
    for name in names:
        assert report[name]["ok"] is True, f"control {name!r} failed: {report[name]}"


def live_processes_of(uid: int) -> list[str]:
    """Processes of ``uid`` that still run: zombies are dead, waiting for the host's init."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = dict(
                    line.split(":", 1)
                    for line in Path(f"/proc/{entry}/status").read_text().splitlines()
                )
            except OSError:
                continue
            if int(status["Uid"].split()[0]) == uid and status["State"].strip()[0] not in "ZX":
                found.append(f"{entry} {status['Name'].strip()} {status['State'].strip()}")
    return found


# --- controls: the sandbox works, so the failures below are not an artefact ---------------------


def test_control_a_jupyter_kernel_starts_and_runs_code_inside_the_sandbox(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    # The filter must not break what workspaces are for: ipykernel (ZMQ, its IOPub pipe on the
    # loopback) starts and executes a cell that reads the project's data.
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
from jupyter_client.manager import KernelManager
os.makedirs("/tmp/runtime", exist_ok=True)
km = KernelManager(connection_file="/tmp/runtime/kernel.json")
km.start_kernel()
kc = km.client()
kc.start_channels()
def run_cell():
    kc.wait_for_ready(timeout=30)
    out = []
    code = "import pandas; print(len(pandas.read_csv('/data/income/part-0.csv')))"
    reply = kc.execute_interactive(code, timeout=30, output_hook=lambda m: out.append(
        m["content"].get("text", "")))
    return [reply["content"]["status"], "".join(out).strip()]
attempt("cell", run_cell)
kc.stop_channels()
km.shutdown_kernel(now=True)
""",
        env={"JUPYTER_RUNTIME_DIR": "/tmp/runtime"},
        timeout=60,
    )
    succeeded(report, "cell")
    assert report["cell"]["value"] == ["ok", "2"]


def test_control_own_data_home_tmp_and_airlock_are_usable(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
attempt("read own data", lambda: open("/data/income/part-0.csv").read())
attempt("list data", listdir, "/data")
attempt("write outbox", lambda: open("/home/researcher/outbox/t.csv", "w").write("a\n"))
attempt("write tmp", lambda: open("/tmp/x", "w").write("x"))
attempt("write run", lambda: open("/run/spe/marker", "w").write("x"))
attempt("listen in run", lambda: socket.socket(socket.AF_UNIX).bind("/run/spe/server2.sock"))
attempt("own airlock", connect_unix, "/run/spe-airlock/airlock.sock")
attempt("unix socketpair", lambda: len(socket.socketpair()))
attempt("cwd", os.getcwd)
attempt("import spe.analysis", lambda: __import__("spe.analysis").__name__)
""",
    )
    succeeded(report, "read own data", "write outbox", "write tmp", "own airlock")
    # The run folder (the server's socket) is read-only: no server can be put in its place.
    failed(report, "write run", "listen in run")
    succeeded(report, "unix socketpair", "import spe.analysis")
    assert report["read own data"]["value"].startswith("pid,wage")
    assert report["list data"]["value"] == ["income"]
    assert report["cwd"]["value"] == "/home/researcher"


# --- network -------------------------------------------------------------------------------------


@pytest.mark.parametrize("inet", [True, False], ids=["loopback-inet", "unix-only"])
def test_tcp_to_database_broker_hub_and_a_live_host_port_fails(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace], inet: bool
) -> None:
    alice, _ = two_workspaces
    with socket.socket() as listener:  # a port that certainly listens on the host
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        live = listener.getsockname()[1]
        report = sandboxes.run(
            alice,
            r"""
for port in HOST["ports"]:
    attempt(f"tcp4 {port}", connect_tcp, "127.0.0.1", port)
    attempt(f"tcp6 {port}", connect_tcp, "::1", port, socket.AF_INET6)
""",
            {"ports": [*HOST_PORTS, live]},
            inet_loopback=inet,
        )
    # With inet sockets allowed they reach only the sandbox's own, empty loopback; without,
    # they cannot be made at all.
    expected = ("ECONNREFUSED", "EADDRNOTAVAIL", "ENETUNREACH") if inet else ("EAFNOSUPPORT",)
    for port in [*HOST_PORTS, live]:
        failed(report, f"tcp4 {port}", f"tcp6 {port}", errnos=expected)


def test_without_seccomp_namespaces_alone_still_reach_no_host_port_nor_new_namespaces(
    sandboxes: Sandboxes,
    two_workspaces: tuple[Workspace, Workspace],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth: with an allow-all filter, sockets open but only onto an empty loopback,
    and no nested user namespace or mount is possible."""
    alice, _ = two_workspaces
    allow_all = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)
    monkeypatch.setattr(sandbox_run, "seccomp_program", lambda **_: allow_all)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        live = listener.getsockname()[1]
        report = sandboxes.run(
            alice,
            r"""
attempt("inet socket opens", lambda: socket.socket().close())
for port in HOST["ports"]:
    attempt(f"tcp4 {port}", connect_tcp, "127.0.0.1", port)
attempt("udp to host resolver", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        .sendto(b"x", ("127.0.0.53", 53)))
def interfaces():  # by ioctl (SIOCGIFNAME): netlink, which if_nameindex uses, is refused
    names = []
    for index in range(1, 64):
        try:
            names.append(socket.if_indextoname(index))
        except OSError:
            pass
    return sorted(names)
attempt("interfaces", interfaces)
def call(name, *args):
    if getattr(libc, name)(*args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
attempt("unshare user", call, "unshare", 0x10000000)
attempt("mount tmpfs", call, "mount", b"none", b"/tmp", b"tmpfs", 0, None)
""",
            {"ports": [*HOST_PORTS, live]},
        )
    succeeded(report, "inet socket opens")  # so what stops the connections is the namespace
    for port in [*HOST_PORTS, live]:
        failed(report, f"tcp4 {port}", errnos=("ECONNREFUSED",))
    assert report["interfaces"]["value"] == ["lo"]
    # bwrap's --disable-userns and the dropped capabilities hold without the filter too.
    failed(report, "unshare user", errnos=("ENOSPC", "EPERM"))
    failed(report, "mount tmpfs", errnos=("EPERM",))


def test_no_interface_but_loopback_and_no_route_out(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    # No packet is ever aimed at a public address (this machine must not send one): the proof that
    # none could leave is that the namespace has no interface but lo and no route at all. A UDP
    # connect() only looks the route up; it sends nothing.
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
def interfaces():  # by ioctl (SIOCGIFNAME): netlink, which if_nameindex uses, is refused
    names = []
    for index in range(1, 64):
        try:
            names.append(socket.if_indextoname(index))
        except OSError:
            pass
    return sorted(names)
attempt("interfaces", interfaces)
def route(family, address):
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((address, 9))
        return s.getsockname()
attempt("route v4", route, socket.AF_INET, "192.0.2.1")
attempt("route v6", route, socket.AF_INET6, "2001:db8::1")
""",
    )
    assert report["interfaces"]["value"] == ["lo"]
    failed(report, "route v4", "route v6", errnos=("ENETUNREACH", "EADDRNOTAVAIL"))


def test_udp_and_dns_lookups_fail(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
# A DNS query for pypi.org, sent to the resolvers a host usually runs on its loopback.
QUERY = bytes.fromhex("abcd010000010000000000000470797069036f72670000010001")
def ask(family, server):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.connect((server, 53))  # connected: a refusal comes back at once instead of a timeout
    s.send(QUERY)
    return s.recv(512)
attempt("dns 127.0.0.1", ask, socket.AF_INET, "127.0.0.1")
attempt("dns 127.0.0.53", ask, socket.AF_INET, "127.0.0.53")
attempt("dns ::1", ask, socket.AF_INET6, "::1")
attempt("getaddrinfo", socket.getaddrinfo, "pypi.org", 443)
attempt("getaddrinfo v6", socket.getaddrinfo, "pypi.org", 443, socket.AF_INET6)
attempt("resolv.conf", read, "/etc/resolv.conf")
""",
    )
    failed(report, "dns 127.0.0.1", "dns 127.0.0.53", "dns ::1", "getaddrinfo", "getaddrinfo v6")
    failed(report, "resolv.conf", errnos=("ENOENT",))


@pytest.mark.parametrize("inet", [True, False], ids=["loopback-inet", "unix-only"])
def test_socket_families_beyond_unix_and_loopback_inet_are_refused(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace], inet: bool
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
families = {"inet": 2, "inet6": 10, "netlink": 16, "packet": 17, "vsock": 40, "bluetooth": 31,
            "can": 29, "alg": 38, "xdp": 44, "key": 15}
for name, family in families.items():
    attempt(name, socket.socket, family, socket.SOCK_RAW if name in ("packet", "key") else
            socket.SOCK_DGRAM if name in ("netlink", "can") else socket.SOCK_STREAM)
attempt("raw inet", socket.socket, 2, socket.SOCK_RAW, 1)
attempt("netlink audit", socket.socket, 16, socket.SOCK_RAW, 9)
attempt("netlink netfilter", socket.socket, 16, socket.SOCK_RAW, 12)
attempt("unix", lambda: socket.socket(socket.AF_UNIX).close())
""",
        inet_loopback=inet,
    )
    if inet:
        succeeded(report, "inet", "inet6")
        failed(report, "raw inet", errnos=("EPERM",))  # no CAP_NET_RAW: no forged packets
    else:
        failed(report, "inet", "inet6", "raw inet", errnos=("EAFNOSUPPORT",))
    failed(
        report, "netlink", "netlink audit", "netlink netfilter", errnos=("EOPNOTSUPP", "ENOTSUP")
    )
    failed(
        report,
        "packet",
        "vsock",
        "bluetooth",
        "can",
        "alg",
        "xdp",
        "key",
        errnos=("EAFNOSUPPORT",),
    )
    succeeded(report, "unix")


def test_a_server_inside_the_sandbox_is_not_reachable_from_the_host(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    # The other direction: a researcher's server on "localhost" is on the sandbox's loopback,
    # not the host's, so nothing on the host (the proxy, the hub) can be tricked into it.
    alice, _ = two_workspaces
    program = sandboxes.program(
        r"""
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4)
s.settimeout(3)
print(s.getsockname()[1], flush=True)
try:
    c, _ = s.accept()
    c.sendall(b"sandbox")
except OSError:
    pass
"""
    )
    process = sandboxes.start(alice, program)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        answer = b""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
                answer = client.recv(16)
        except OSError:
            pass  # refused: nothing listens there on the host
    finally:
        stop_sandbox(process, alice.id)
    assert answer != b"sandbox"


def test_host_abstract_unix_socket_is_not_reachable(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    # Abstract unix sockets have no file: only the network namespace separates them.
    alice, _ = two_workspaces
    name = f"\0spe-escape-{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(name)
        listener.listen(4)
        report = sandboxes.run(
            alice, 'attempt("abstract", connect_unix, HOST["name"])', {"name": name}
        )
    failed(report, "abstract", errnos=("ECONNREFUSED", "ENOENT"))


# --- files of the host and of other workspaces --------------------------------------------------


def test_another_projects_extract_is_not_visible(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, bob = two_workspaces
    victim = bob.datasets["health"]
    report = sandboxes.run(
        alice,
        r"""
attempt("by host path", read, HOST["file"])
attempt("host folder", listdir, HOST["folder"])
attempt("under /data", read, "/data/health/part-0.csv")
attempt("projects folder", listdir, HOST["projects"])
attempt("data", listdir, "/data")
""",
        {
            "file": str(victim / "part-0.csv"),
            "folder": str(victim),
            "projects": str(sandboxes.state / "data" / "projects"),
        },
    )
    failed(
        report, "by host path", "host folder", "under /data", "projects folder", errnos=("ENOENT",)
    )
    assert report["data"]["value"] == ["income"]


def test_host_state_platform_key_and_database_are_not_visible(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
attempt("state dir", listdir, HOST["state"])
attempt("platform key", read, HOST["key"])
attempt("database", read, HOST["db"])
attempt("repo state", listdir, HOST["repo"] + "/var")
attempt("repo source", read, HOST["repo"] + "/pyproject.toml")
attempt("hub venv", listdir, HOST["repo"] + "/.venv")
""",
        {
            "state": str(sandboxes.state),
            "key": str(sandboxes.key_file),
            "db": str(sandboxes.database),
            "repo": str(REPO),
        },
    )
    failed(
        report,
        "state dir",
        "platform key",
        "database",
        "repo state",
        "repo source",
        "hub venv",
        errnos=("ENOENT",),
    )


def test_root_work_var_home_sys_and_shadow_of_the_host_are_not_visible(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
attempt("root", listdir, "/")
attempt("/root", listdir, "/root")
attempt("/var", listdir, "/var")
attempt("/sys", listdir, "/sys")
attempt("cgroups", listdir, "/sys/fs/cgroup")
attempt("/home", listdir, "/home")
attempt("/etc", listdir, "/etc")
attempt("shadow", read, "/etc/shadow")
attempt("ssh keys", listdir, "/etc/ssh")
attempt("/work", listdir, "/work")
attempt("/opt", listdir, "/opt")
attempt("/mnt", listdir, "/mnt")
attempt("host passwd users", lambda: [l.split(":")[0] for l in open("/etc/passwd")])
""",
    )
    failed(report, "/root", "/var", "/sys", "cgroups", "shadow", "ssh keys", "/opt", "/mnt")
    assert set(report["root"]["value"]) <= {
        "bin", "data", "dev", "etc", "home", "lib", "lib64", "proc", "run", "sbin", "tmp", "usr",
        *Path(sandboxes.env_dir).parts[1:2],
    }  # fmt: skip
    assert report["/home"]["value"] == ["researcher"]
    assert set(report["/etc"]["value"]) <= {
        "group", "hosts", "ld.so.cache", "localtime", "nsswitch.conf", "passwd", "spe-workspace",
    }  # fmt: skip
    assert report["host passwd users"]["value"] == ["root", "researcher", "nobody"]
    if report["/work"]["ok"]:  # only the path down to the workspace env, when it is under /work
        assert len(report["/work"]["value"]) <= 1


def test_dotdot_and_proc_root_paths_do_not_leave_the_sandbox(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
attempt("home ..", read, "/home/researcher/../../../../etc/shadow")
attempt("data ..", read, "/data/income/../../../../" + HOST["key"])
attempt("outbox ..", listdir, "/home/researcher/outbox/../../../../root")
attempt("proc self root", read, "/proc/self/root/../../etc/shadow")
attempt("proc 1 root", read, "/proc/1/root" + HOST["key"])
attempt("proc 1 cwd", listdir, "/proc/1/cwd/../../..")
attempt("proc self fd", listdir, "/proc/self/fd")
os.chdir("/..")
attempt("above root", listdir, ".")
""",
        {"key": str(sandboxes.key_file)},
    )
    failed(report, "home ..", "data ..", "outbox ..", "proc self root", "proc 1 root")
    above = set(report["above root"]["value"])
    assert "root" not in above and "var" not in above  # '/..' is the sandbox's own root
    if report["proc 1 cwd"]["ok"]:
        assert "root" not in report["proc 1 cwd"]["value"]


def test_data_is_read_only(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
attempt("create", lambda: open("/data/income/new.csv", "w"))
attempt("append", lambda: open("/data/income/part-0.csv", "a"))
attempt("unlink", os.unlink, "/data/income/part-0.csv")
attempt("rename", os.rename, "/data/income/part-0.csv", "/data/income/x.csv")
attempt("chmod", os.chmod, "/data/income/part-0.csv", 0o777)
attempt("mkdir", os.mkdir, "/data/income/sub")
attempt("new dataset", os.mkdir, "/data/other")
attempt("utime", os.utime, "/data/income/part-0.csv", (0, 0))
""",
    )
    failed(
        report,
        "create",
        "append",
        "unlink",
        "rename",
        "chmod",
        "mkdir",
        "new dataset",
        "utime",
        errnos=("EROFS", "EACCES", "EPERM"),
    )
    assert (alice.datasets["income"] / "part-0.csv").read_text().startswith("pid,wage")


def test_nothing_outside_home_run_and_tmp_is_writable(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
for path in ["/x", "/usr/x", "/usr/local/x", "/etc/x", "/etc/spe-workspace/x",
             "/run/spe-airlock/x", "/run/x", "/home/x", HOST["env"] + "/bin/x", "/dev/x"]:
    attempt("write " + path, lambda p=path: open(p, "w").write("x"))
attempt("append passwd", lambda: open("/etc/passwd", "a").write("x"))
attempt("hostname", lambda: open("/proc/sys/kernel/hostname", "w").write("evil"))
attempt("sysrq", lambda: open("/proc/sysrq-trigger", "w").write("b"))
attempt("env python", lambda: open(HOST["env"] + "/bin/python", "a"))
attempt("site-packages", lambda: open(HOST["site"] + "/evil.pth", "w"))
""",
        {
            "env": str(sandboxes.env_dir),
            "site": str(next(sandboxes.env_dir.glob("lib/python3*/site-packages"))),
        },
    )
    failed(report, *(name for name in report))


def test_another_workspaces_home_is_not_visible(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, bob = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
attempt("by host path", read, HOST["file"])
attempt("host home", listdir, HOST["home"])
attempt("workspaces", listdir, HOST["workspaces"])
attempt("home", listdir, "/home")
attempt("bob", listdir, "/home/bob")
""",
        {
            "file": str(bob.paths.home / "bob-private.txt"),
            "home": str(bob.paths.home),
            "workspaces": str(sandboxes.state / "workspaces"),
        },
    )
    failed(report, "by host path", "host home", "workspaces", "bob", errnos=("ENOENT",))
    assert report["home"]["value"] == ["researcher"]


def test_another_workspaces_airlock_socket_is_not_reachable(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, bob = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
attempt("bob airlock", connect_unix, HOST["bob"])
attempt("airlock folder", listdir, "/run/spe-airlock")
attempt("airlock parent", listdir, HOST["parent"])
""",
        {"bob": str(bob.paths.airlock_socket), "parent": str(bob.paths.airlock.parent)},
    )
    failed(report, "bob airlock", "airlock parent", errnos=("ENOENT",))
    assert report["airlock folder"]["value"] == ["airlock.sock"]


def test_another_workspaces_server_socket_cannot_be_replaced(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, bob = two_workspaces
    before = os.stat(bob.paths.server_socket).st_ino
    report = sandboxes.run(
        alice,
        r"""
attempt("connect", connect_unix, HOST["sock"])
attempt("unlink", os.unlink, HOST["sock"])
def bind():
    s = socket.socket(socket.AF_UNIX)
    s.bind(HOST["sock"])
attempt("bind", bind)
attempt("symlink", os.symlink, "/run/spe/server.sock", HOST["sock"])
""",
        {"sock": str(bob.paths.server_socket)},
    )
    failed(report, "connect", "unlink", "bind", "symlink", errnos=("ENOENT", "EROFS"))
    assert os.stat(bob.paths.server_socket).st_ino == before
    with socket.socket(socket.AF_UNIX) as client:  # bob's server still answers
        client.connect(str(bob.paths.server_socket))


def test_own_airlock_socket_cannot_be_replaced_to_impersonate_the_airlock(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
attempt("unlink", os.unlink, "/run/spe-airlock/airlock.sock")
attempt("rename", os.rename, "/run/spe-airlock/airlock.sock", "/run/spe-airlock/old")
def bind():
    s = socket.socket(socket.AF_UNIX)
    s.bind("/run/spe-airlock/fake.sock")
attempt("bind", bind)
""",
    )
    failed(report, "unlink", "rename", "bind", errnos=("EROFS", "EACCES"))


# --- processes and the kernel -------------------------------------------------------------------


def test_no_procfs_so_no_host_processes_and_no_host_paths_in_command_lines(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
attempt("pids", listdir, "/proc")
attempt("init cmdline", read, "/proc/1/cmdline")
attempt("host pid", os.kill, HOST["pid"], 0)
attempt("kill host pid", os.kill, HOST["pid"], 15)
attempt("own pid", os.getpid)
""",
        {"pid": os.getpid()},
    )
    # The sandbox has no procfs: no process list, no command line (bwrap's own, the sandbox's
    # init, would name host paths were its options not passed through --args anyway).
    failed(report, "pids", "init cmdline", errnos=("ENOENT",))
    assert report["own pid"]["value"] <= 3  # its own pid namespace: bwrap's init, then python
    if os.getpid() != report["own pid"]["value"]:
        failed(report, "host pid", "kill host pid", errnos=("ESRCH",))


def test_ptrace_and_process_memory_access_are_refused(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
import time
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
nr = HOST["nr"]
attempt("traceme", syscall, nr["ptrace"], 0, 0, 0, 0)
attempt("attach init", syscall, nr["ptrace"], 16, 1, 0, 0)
attempt("attach child", syscall, nr["ptrace"], 16, child, 0, 0)
attempt("seize child", syscall, nr["ptrace"], 0x4206, child, 0, 0)
buf = ctypes.create_string_buffer(8)
local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
attempt("vm_readv", syscall, nr["process_vm_readv"], child, ctypes.addressof(local), 1,
        ctypes.addressof(local), 1, 0)
attempt("vm_writev", syscall, nr["process_vm_writev"], child, ctypes.addressof(local), 1,
        ctypes.addressof(local), 1, 0)
attempt("pidfd_getfd", syscall, nr["pidfd_getfd"], 0, 0, 0)
os.kill(child, 9)
""",
        {"nr": NR},
    )
    failed(
        report,
        "traceme",
        "attach init",
        "attach child",
        "seize child",
        "vm_readv",
        "vm_writev",
        "pidfd_getfd",
        errnos=("EPERM",),
    )


def test_mount_unshare_setns_chroot_and_nested_namespaces_are_refused(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
nr = HOST["nr"]
def call(name, *args):
    res = getattr(libc, name)(*args)
    if res != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return res
attempt("mount tmpfs", call, "mount", b"none", b"/tmp", b"tmpfs", 0, None)
attempt("bind host root", call, "mount", b"/", b"/tmp", None, 4096, None)
attempt("umount data", call, "umount2", b"/data/income", 2)
attempt("remount data rw", call, "mount", None, b"/data/income", None, 32 | 4096, None)
attempt("unshare user", call, "unshare", 0x10000000)
attempt("unshare mount", call, "unshare", 0x00020000)
attempt("unshare net", call, "unshare", 0x40000000)
fd = os.pidfd_open(os.getpid())  # no procfs: a pidfd names the namespaces to join
attempt("setns", call, "setns", fd, 0x40000000)
attempt("chroot", call, "chroot", b"/tmp")
attempt("pivot_root", syscall, nr["pivot_root"], 0, 0)
attempt("open_tree", syscall, nr["open_tree"], -100, 0, 0)
attempt("fsopen", syscall, nr["fsopen"], 0, 0)
def clone_newuser():
    pid = syscall(nr["clone"], 0x10000000 | 17, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    return pid
attempt("clone newuser", clone_newuser)
attempt("unshare binary", lambda: __import__("subprocess").run(
    ["unshare", "-U", "true"], capture_output=True).returncode)
""",
        {"nr": NR},
    )
    failed(
        report,
        "mount tmpfs",
        "bind host root",
        "umount data",
        "remount data rw",
        "unshare user",
        "unshare mount",
        "unshare net",
        "setns",
        "chroot",
        "pivot_root",
        "open_tree",
        "fsopen",
        "clone newuser",
        errnos=("EPERM",),
    )
    assert report["unshare binary"]["value"] != 0


def test_kernel_modules_kexec_and_reboot_are_refused(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
nr = HOST["nr"]
attempt("init_module", syscall, nr["init_module"], 0, 0, 0)
attempt("finit_module", syscall, nr["finit_module"], 0, 0, 0)
name = ctypes.create_string_buffer(b"ext4")
attempt("delete_module", syscall, nr["delete_module"], ctypes.addressof(name), 0)
attempt("kexec_load", syscall, nr["kexec_load"], 0, 0, 0, 0)
attempt("kexec_file_load", syscall, nr["kexec_file_load"], -1, -1, 0, 0, 0)
attempt("reboot", syscall, nr["reboot"], 0xfee1dead, 672274793, 0, 0)
attempt("swapoff", syscall, nr["swapoff"], 0)
attempt("syslog", syscall, nr["syslog"], 3, 0, 0)
attempt("modprobe", lambda: __import__("subprocess").run(
    ["/usr/sbin/modprobe", "dummy"], capture_output=True).returncode)
""",
        {"nr": NR},
    )
    failed(
        report,
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "swapoff",
        "syslog",
        errnos=("EPERM",),
    )
    assert report["modprobe"]["ok"] is False or report["modprobe"]["value"] != 0


def test_bpf_perf_userfaultfd_keyring_and_io_uring_are_refused(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
nr = HOST["nr"]
attempt("bpf", syscall, nr["bpf"], 5, 0, 0)
attempt("perf_event_open", syscall, nr["perf_event_open"], 0, 0, -1, -1, 0)
attempt("userfaultfd", syscall, nr["userfaultfd"], 0)
attempt("/dev/userfaultfd", read, "/dev/userfaultfd")
attempt("keyctl", syscall, nr["keyctl"], 0, -3, 0)
attempt("add_key", syscall, nr["add_key"], 0, 0, 0, 0, 0)
attempt("io_uring_setup", syscall, nr["io_uring_setup"], 1, 0)
attempt("open_by_handle_at", syscall, nr["open_by_handle_at"], -100, 0, 0)
attempt("name_to_handle_at", syscall, nr["name_to_handle_at"], -100, 0, 0, 0, 0)
""",
        {"nr": NR},
    )
    failed(
        report,
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "keyctl",
        "add_key",
        "io_uring_setup",
        "open_by_handle_at",
        "name_to_handle_at",
        errnos=("EPERM",),
    )
    failed(report, "/dev/userfaultfd", errnos=("ENOENT",))


def test_personality_cannot_turn_off_address_randomisation(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
nr = HOST["nr"]
attempt("query", syscall, nr["personality"], 0xFFFFFFFF)
attempt("no randomize", syscall, nr["personality"], 0x0040000)
attempt("read implies exec", syscall, nr["personality"], 0x0400000)
attempt("setarch", lambda: __import__("subprocess").run(
    ["setarch", "-R", "true"], capture_output=True).returncode)
""",
        {"nr": NR},
    )
    succeeded(report, "query")
    failed(report, "no randomize", "read implies exec", errnos=("EPERM",))
    assert report["setarch"]["ok"] is False or report["setarch"]["value"] != 0


def test_capabilities_dropped_no_new_privileges_and_seccomp_on(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
# No procfs: the same facts from the kernel's own calls (capget, prctl, getresuid).
header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
data = (ctypes.c_uint32 * 6)()  # two __user_cap_data_struct {effective, permitted, inheritable}
syscall(HOST["capget"], ctypes.addressof(header), ctypes.addressof(data))
R["CapEff"] = "%x" % (data[0] | data[3] << 32)
R["CapPrm"] = "%x" % (data[1] | data[4] << 32)
R["CapInh"] = "%x" % (data[2] | data[5] << 32)
R["CapBnd"] = "%x" % sum(1 << c for c in range(64) if libc.prctl(23, c, 0, 0, 0) == 1)
R["CapAmb"] = "%x" % sum(1 << c for c in range(64) if libc.prctl(47, 1, c, 0, 0) == 1)
R["NoNewPrivs"] = str(libc.prctl(39, 0, 0, 0, 0))
R["Seccomp"] = str(libc.prctl(21, 0, 0, 0, 0))
R["Uid"] = " ".join(str(u) for u in os.getresuid())
attempt("setuid root", os.setuid, 0)
attempt("su", lambda: __import__("subprocess").run(["su", "-c", "id"], capture_output=True,
        stdin=__import__("subprocess").DEVNULL).returncode)
""",
        {"capget": 125 if ARCH == 0 else 90},
    )
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(report[key], 16) == 0, f"{key} = {report[key]}"
    assert report["NoNewPrivs"] == "1"
    assert report["Seccomp"] == "2"
    uids = {int(u) for u in report["Uid"].split()}
    assert 0 not in uids
    if alice.uid is not None:
        assert uids == {alice.uid}
    failed(report, "setuid root", errnos=("EPERM", "EINVAL"))
    assert report["su"]["ok"] is False or report["su"]["value"] != 0


def test_dev_holds_only_harmless_devices(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
attempt("dev", listdir, "/dev")
for dev in ["/dev/vda", "/dev/sda", "/dev/mem", "/dev/kmem", "/dev/kmsg", "/dev/kvm",
            "/dev/port", "/dev/vsock", "/dev/fuse", "/dev/loop0"]:
    attempt(dev, read, dev)
""",
    )
    allowed = {"console", "core", "fd", "full", "null", "ptmx", "pts", "random", "shm"}
    allowed |= {"stderr", "stdin", "stdout", "tty", "urandom", "zero"}
    assert set(report["dev"]["value"]) <= allowed
    failed(report, *(name for name in report if name != "dev"), errnos=("ENOENT",))


def test_sandbox_processes_run_as_the_workspace_user_and_carry_no_spe_secrets(
    sandboxes: Sandboxes,
    two_workspaces: tuple[Workspace, Workspace],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice, _ = two_workspaces
    secret = "postgresql+psycopg://spe:hunter2@db/spe"
    monkeypatch.setenv("SPE_DATABASE_URL", secret)  # in the spawner's environment
    monkeypatch.setenv("SPE_PLATFORM_KEY", "c2VjcmV0")
    code = sandboxes.program(
        r"""
import time
R["environ"] = dict(os.environ)
R["all environs"] = [open(f"/proc/{p}/environ", "rb").read().decode("latin-1")
                     for p in (os.listdir("/proc") if os.path.isdir("/proc") else [])
                     if p.isdigit() and os.access(f"/proc/{p}/environ", os.R_OK)]
print(json.dumps(R), flush=True)
time.sleep(30)
"""
    )
    process = sandboxes.start(alice, code)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        members = []
        if sandbox_run.cgroups_available() is None:
            procs = cgroup_paths(alice.id)["pids"] / "cgroup.procs"
            members = [int(pid) for pid in procs.read_text().split()]
        host_uids: set[int] = set()
        for pid in members:  # real, effective, saved and file-system uid, as the host sees them
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            host_uids |= {
                int(u) for u in next(x for x in status if x.startswith("Uid:")).split()[1:]
            }
    finally:
        stop_sandbox(process, alice.id)
    report = json.loads(line)
    spe_variables = {k for k in report["environ"] if k.startswith("SPE_")}
    assert spe_variables == {"SPE_OUTBOX_DIR", "SPE_WORKSPACE_DATA_DIR"}
    assert report["environ"]["HOME"] == "/home/researcher"
    for environ in report["all environs"]:
        assert "hunter2" not in environ and "c2VjcmV0" not in environ
    if alice.uid is not None:
        assert members and host_uids == {alice.uid}  # on the host too, never root


# --- resource limits ----------------------------------------------------------------------------


@pytest.mark.usefixtures("need_limits")
def test_fork_bomb_is_contained_by_pids_max(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    limits = SandboxLimits(memory_mb=512, pids_max=48, cpus=0.5)
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    process = sandboxes.start(
        alice, [str(sandboxes.env_dir / "bin" / "python"), "-c", bomb], limits
    )
    groups = cgroup_paths(alice.id)
    try:
        deadline = time.monotonic() + 10
        events = 0
        while time.monotonic() < deadline:
            events = int((groups["pids"] / "pids.events").read_text().split()[1])
            if events > 50:  # forks refused for a while: the bomb is at the ceiling
                break
            time.sleep(0.1)
        current = int((groups["pids"] / "pids.current").read_text())
        quota = int((groups["cpu"] / "cpu.cfs_quota_us").read_text())
        started = time.monotonic()
        host = subprocess.run(["/usr/bin/true"], check=False, timeout=10)
        host_fork_seconds = time.monotonic() - started
    finally:
        stop_sandbox(process, alice.id, timeout=10)
    assert events > 50, "the bomb never reached pids.max"
    assert current <= limits.pids_max
    assert quota == 50_000  # half a core
    assert host.returncode == 0 and host_fork_seconds < 5  # the host still forks, promptly
    assert not any(folder.exists() for folder in groups.values())
    if alice.uid is not None:
        assert live_processes_of(alice.uid) == []  # every bomb process is gone


@pytest.mark.usefixtures("need_limits")
def test_memory_bomb_is_contained_by_memory_limit(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace]
) -> None:
    alice, _ = two_workspaces
    limits = SandboxLimits(memory_mb=128, pids_max=64, cpus=1.0)
    bomb = (
        "chunks = []\n"
        "for i in range(64):\n"
        "    chunks.append(b'\\x01' * (16 << 20))\n"
        "    print(16 * (i + 1), flush=True)\n"
        "print('survived', flush=True)\n"
    )
    process = sandboxes.start(
        alice, [str(sandboxes.env_dir / "bin" / "python"), "-c", bomb], limits
    )
    memory = cgroup_paths(alice.id)["memory"]
    try:
        out, _ = process.communicate(timeout=30)
        peak = int((memory / "memory.max_usage_in_bytes").read_text())
        oom = dict(
            line.split() for line in (memory / "memory.oom_control").read_text().splitlines()
        )
    finally:
        stop_sandbox(process, alice.id)
    lines = out.decode().split()
    assert "survived" not in lines
    reached = max((int(x) for x in lines if x.isdigit()), default=0)
    assert reached < 128
    assert peak <= 128 << 20
    assert int(oom.get("oom_kill", "1")) >= 1
    assert process.returncode != 0
    assert subprocess.run(["/usr/bin/true"], check=False).returncode == 0  # host unharmed


# --- exporting raw data by links ----------------------------------------------------------------


def test_symlink_in_outbox_to_data_points_nowhere_on_the_host_and_is_not_exported(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace], tmp_path: Path
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
out = "/home/researcher/outbox/"
attempt("absolute", os.symlink, "/data/income/part-0.csv", out + "leak.csv")
attempt("relative", os.symlink, "../../../data/income/part-0.csv", out + "leak2.csv")
attempt("reads inside", lambda: open(out + "leak.csv").read())
""",
    )
    succeeded(report, "absolute", "relative", "reads inside")  # links may be made...
    for name in ("leak.csv", "leak2.csv"):
        link = alice.paths.outbox / name
        assert link.is_symlink()
        target = Path(os.path.realpath(link))
        assert target != alice.datasets["income"] / "part-0.csv"  # ...but lead nowhere here
        dest = tmp_path / f"copy-{name}"
        dest.mkdir()
        fd = open_outbox(alice.paths.outbox)
        try:
            with pytest.raises(ExportInputError, match="symbolic link"):
                copy_file(fd, name, dest, max_bytes=1 << 20)
        finally:
            os.close(fd)
        assert list(dest.iterdir()) == []


def test_hard_link_to_data_fails_and_a_linked_outbox_file_is_not_exported(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace], tmp_path: Path
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
out = "/home/researcher/outbox/"
attempt("link data", os.link, "/data/income/part-0.csv", out + "leak.csv")
attempt("link env", os.link, HOST["env"] + "/pyvenv.cfg", out + "cfg.txt")
attempt("link home", os.link, "/home/researcher/notes.csv", out + "twice.csv")
""",
        {"env": str(sandboxes.env_dir)},
    )
    failed(report, "link data", "link env", errnos=("EXDEV",))
    succeeded(report, "link home")  # within the home: allowed, and refused at export
    fd = open_outbox(alice.paths.outbox)
    try:
        with pytest.raises(ExportInputError, match="hard links"):
            copy_file(fd, "twice.csv", tmp_path, max_bytes=1 << 20)
    finally:
        os.close(fd)


def test_outbox_replaced_by_a_link_to_data_or_dotdot_names_are_not_exported(
    sandboxes: Sandboxes, two_workspaces: tuple[Workspace, Workspace], tmp_path: Path
) -> None:
    alice, _ = two_workspaces
    report = sandboxes.run(
        alice,
        r"""
import shutil
shutil.rmtree("/home/researcher/outbox")
attempt("outbox link", os.symlink, "/data/income", "/home/researcher/outbox")
""",
    )
    succeeded(report, "outbox link")
    with pytest.raises(ExportInputError, match="not a plain folder"):
        open_outbox(alice.paths.outbox)
    alice.paths.outbox.unlink()
    alice.paths.outbox.mkdir()
    fd = open_outbox(alice.paths.outbox)
    try:
        for name in ("../notes.csv", "../../run/server.sock", "..", "/etc/passwd"):
            with pytest.raises(ExportInputError):
                copy_file(fd, name, tmp_path, max_bytes=1 << 20)
    finally:
        os.close(fd)
