"""The pure parts of the workspace sandbox: bwrap's argv, its environment, its /etc files, and
the seccomp program (run here through a small classic-BPF interpreter)."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import struct
from pathlib import Path

import pytest

from spe.workspaces import seccomp
from spe.workspaces.layout import AIRLOCK, CONFIG, DATA, HOME, RUN
from spe.workspaces.sandbox import (
    BWRAP,
    WORKSPACE_SPE_VARIABLES,
    SandboxSpec,
    sandbox_command,
    sandbox_environment,
    sandbox_files,
    seccomp_program,
)

STATE = Path("/srv/spe/state")
ENV_DIR = Path("/opt/spe/.venv-workspace")


def example_spec(**changes: object) -> SandboxSpec:
    ws = STATE / "workspaces" / "income" / "dave"
    spec = SandboxSpec(
        workspace_id="income--dave",
        home=ws / "home",
        datasets={
            "income": STATE / "data" / "projects" / "p1" / "extracts" / "income" / "k1",
            "education": STATE / "data" / "projects" / "p1" / "extracts" / "education" / "k2",
        },
        run_dir=ws / "run",
        airlock_dir=STATE / "airlock" / "income--dave",
        config_dir=STATE / "workspace-config",
        env_dir=ENV_DIR,
        command=[str(ENV_DIR / "bin" / "jupyter-server"), "--sock", str(RUN / "server.sock")],
        env={"JUPYTER_CONFIG_DIR": str(CONFIG / "jupyter")},
        uid=2_100_000,
        gid=2_100_000,
        seccomp_fd=3,
        file_fds={"/etc/passwd": 4, "/etc/group": 5, "/etc/nsswitch.conf": 6, "/etc/hosts": 7},
    )
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def options(argv: list[str]) -> list[str]:
    return argv[: argv.index("--")]


def binds(argv: list[str]) -> list[tuple[str, str, str]]:
    """(option, source, destination) of every bind in the argv."""
    out = []
    opts = options(argv)
    for i, arg in enumerate(opts):
        if arg in ("--bind", "--ro-bind", "--ro-bind-try", "--bind-try", "--dev-bind"):
            out.append((arg, opts[i + 1], opts[i + 2]))
    return out


def setenvs(argv: list[str]) -> dict[str, str]:
    opts = options(argv)
    return {opts[i + 1]: opts[i + 2] for i, a in enumerate(opts) if a == "--setenv"}


# --- bwrap's argv --------------------------------------------------------------------------------


def test_argv_unshares_every_namespace_and_drops_every_capability() -> None:
    argv = sandbox_command(example_spec())
    assert argv[0] == BWRAP == "/usr/bin/bwrap"
    opts = options(argv)
    for flag in (
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ):
        assert flag in opts, flag
    assert opts[opts.index("--cap-drop") + 1] == "ALL"
    assert opts[opts.index("--hostname") + 1] == "workspace"
    assert "--share-net" not in opts  # no network at all: the net namespace has only lo


def test_command_comes_last_after_a_double_dash() -> None:
    spec = example_spec()
    argv = sandbox_command(spec)
    assert argv[argv.index("--") + 1 :] == list(spec.command)


def test_data_airlock_config_env_and_usr_are_bound_read_only() -> None:
    spec = example_spec()
    mounted = {dest: (opt, src) for opt, src, dest in binds(sandbox_command(spec))}
    assert mounted[str(DATA / "income")] == ("--ro-bind", str(spec.datasets["income"]))
    assert mounted[str(DATA / "education")] == ("--ro-bind", str(spec.datasets["education"]))
    assert mounted[str(AIRLOCK)] == ("--ro-bind", str(spec.airlock_dir))
    assert mounted[str(CONFIG)] == ("--ro-bind", str(spec.config_dir))
    assert mounted[str(ENV_DIR)] == ("--ro-bind", str(ENV_DIR))
    assert mounted["/usr"] == ("--ro-bind", "/usr")


def test_only_home_is_bound_writable_and_the_server_socket_folder_is_read_only() -> None:
    spec = example_spec()
    mounted = {dest: (opt, src) for opt, src, dest in binds(sandbox_command(spec))}
    writable = {(src, dest) for opt, src, dest in binds(sandbox_command(spec)) if opt == "--bind"}
    assert writable == {(str(spec.home), str(HOME))}
    assert mounted[str(RUN)] == ("--ro-bind", str(spec.run_dir))


def test_no_host_path_outside_the_spec_appears_in_the_argv() -> None:
    spec = example_spec()
    folders = [spec.home, spec.run_dir, spec.airlock_dir, spec.config_dir, spec.env_dir]
    allowed_sources = {str(p) for p in [*folders, *spec.datasets.values()]}
    allowed_sources |= {"/usr", "/etc/ld.so.cache", "/etc/localtime"}
    argv = sandbox_command(spec)
    assert {src for _, src, _ in binds(argv)} <= allowed_sources
    for forbidden in ("/root", "/work", "/var", "/home/", "/sys", "/etc/shadow", "/etc/passwd"):
        assert not any(src.startswith(forbidden) for _, src, _ in binds(argv)), forbidden
    # The state folder appears only as the sources of the workspace's own folders.
    state_args = [a for a in options(argv) if a.startswith(str(STATE))]
    assert set(state_args) <= allowed_sources


def test_dev_and_tmp_are_fresh_and_proc_and_sys_are_absent() -> None:
    opts = options(sandbox_command(example_spec()))
    # No procfs: its mountinfo would show host paths, its /proc/<pid>/mem the server's memory.
    assert "--proc" not in opts and not any(a.startswith("/proc") for a in opts)
    assert opts[opts.index("--dev") + 1] == "/dev"
    tmpfs = [opts[i + 1] for i, a in enumerate(opts) if a == "--tmpfs"]
    assert tmpfs == ["/dev/shm", "/tmp"]
    assert not any(a.startswith("/sys") for a in opts)
    assert "--dev-bind" not in opts  # no host device reaches the sandbox


def test_root_and_dev_are_remounted_read_only_after_every_mount() -> None:
    opts = options(sandbox_command(example_spec()))
    remounts = [opts[i + 1] for i, a in enumerate(opts) if a == "--remount-ro"]
    assert remounts == ["/dev", "/"]
    last_mount = max(
        i for i, a in enumerate(opts) if a in ("--bind", "--ro-bind", "--tmpfs", "--dir")
    )
    assert opts.index("--remount-ro") > last_mount


def test_workspace_runs_in_home_with_the_given_uid_gid_and_seccomp_fd() -> None:
    opts = options(sandbox_command(example_spec()))
    assert opts[opts.index("--chdir") + 1] == str(HOME)
    assert opts[opts.index("--uid") + 1] == "2100000"
    assert opts[opts.index("--gid") + 1] == "2100000"
    assert opts[opts.index("--seccomp") + 1] == "3"


def test_uid_gid_and_seccomp_are_left_out_when_not_given() -> None:
    opts = options(sandbox_command(example_spec(uid=None, gid=None, seccomp_fd=None)))
    assert "--uid" not in opts and "--gid" not in opts and "--seccomp" not in opts


def test_root_is_refused_as_a_workspace_user() -> None:
    with pytest.raises(ValueError, match="never runs as root"):
        sandbox_command(example_spec(uid=0))


def test_each_generated_etc_file_is_bound_read_only_from_its_fd() -> None:
    opts = options(sandbox_command(example_spec()))
    data = {opts[i + 2]: opts[i + 1] for i, a in enumerate(opts) if a == "--ro-bind-data"}
    assert data == {
        "/etc/passwd": "4",
        "/etc/group": "5",
        "/etc/nsswitch.conf": "6",
        "/etc/hosts": "7",
    }
    for i, a in enumerate(opts):
        if a == "--ro-bind-data":
            assert opts[i - 2 : i] == ["--perms", "0444"]


def test_bad_dataset_names_are_refused_before_they_become_paths() -> None:
    for name in ("..", "../etc", "a/b", "", ".hidden", "a..b"):
        with pytest.raises(ValueError):
            sandbox_command(example_spec(datasets={name: STATE / "x"}))


def test_relative_host_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        sandbox_command(example_spec(home=Path("var/workspaces/x/home")))


def test_empty_command_is_refused() -> None:
    with pytest.raises(ValueError, match="command"):
        sandbox_command(example_spec(command=[]))


def test_sandbox_command_is_pure() -> None:
    spec = example_spec()
    assert sandbox_command(spec) == sandbox_command(spec)
    assert sandbox_command(spec) == sandbox_command(example_spec())


# --- environment -----------------------------------------------------------------------------


def test_environment_has_fixed_home_and_path_into_the_workspace_env() -> None:
    spec = example_spec()
    env = setenvs(sandbox_command(spec))
    assert env == sandbox_environment(spec)
    assert env["HOME"] == "/home/researcher"
    assert env["PATH"].split(":")[0] == str(ENV_DIR / "bin")
    assert "/root" not in env["PATH"] and ".venv:" not in env["PATH"]
    assert env["JUPYTER_CONFIG_DIR"] == str(CONFIG / "jupyter")


def test_environment_carries_no_spe_secret() -> None:
    env = sandbox_environment(example_spec())
    assert {k for k in env if k.startswith("SPE_")} <= WORKSPACE_SPE_VARIABLES


@pytest.mark.parametrize(
    "name",
    [
        "SPE_DATABASE_URL",
        "SPE_PLATFORM_KEY",
        "SPE_PLATFORM_KEY_FILE",
        "SPE_STATE_DIR",
        "SPE_BROKER_URL",
        "SPE_DATA_DIR",
        "SPE_CHECKPOINT_FILE",
    ],
)
def test_spe_settings_that_name_secrets_or_host_paths_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="may not enter a workspace"):
        sandbox_command(example_spec(env={name: "x"}))


@pytest.mark.parametrize("name", ["HOME", "PATH", "USER"])
def test_home_and_path_cannot_be_overridden(name: str) -> None:
    with pytest.raises(ValueError, match="fixed"):
        sandbox_command(example_spec(env={name: "/root"}))


def test_malformed_variable_names_are_refused() -> None:
    for name in ("A=B", "", "1X", "X Y"):
        with pytest.raises(ValueError):
            sandbox_environment(example_spec(env={name: "v"}))


# --- generated /etc files --------------------------------------------------------------------


def test_generated_passwd_and_group_list_only_root_the_researcher_and_nobody() -> None:
    files = sandbox_files(example_spec())
    users = [line.split(":") for line in files["/etc/passwd"].decode().splitlines()]
    assert [u[0] for u in users] == ["root", "researcher", "nobody"]
    researcher = users[1]
    assert researcher[2:4] == ["2100000", "2100000"] and researcher[5] == "/home/researcher"
    groups = [line.split(":")[0] for line in files["/etc/group"].decode().splitlines()]
    assert groups == ["root", "researcher", "nogroup"]


def test_generated_nsswitch_uses_local_files_only() -> None:
    nsswitch = sandbox_files(example_spec())["/etc/nsswitch.conf"].decode()
    for line in nsswitch.splitlines():
        assert line.split(":", 1)[1].split() == ["files"]


# --- the seccomp program ---------------------------------------------------------------------

X86, ARM, I386 = seccomp.AUDIT_ARCH_X86_64, seccomp.AUDIT_ARCH_AARCH64, 0x40000003
ALLOW = seccomp.SECCOMP_RET_ALLOW
KILL = seccomp.SECCOMP_RET_KILL_PROCESS


def eperm(code: int = errno.EPERM) -> int:
    return seccomp.SECCOMP_RET_ERRNO | code


def instructions(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]


def run_filter(nr: int, arch: int, *args: int, inet: bool = True) -> int:
    """Run the program over one seccomp_data, as the kernel's classic BPF would."""
    padded = (list(args) + [0] * 6)[:6]
    data = struct.pack("=iIQ6Q", nr, arch, 0x401000, *padded)
    insns = instructions(seccomp_program(inet=inet))
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == seccomp.BPF_LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == seccomp.BPF_JMP_JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == seccomp.BPF_JMP_JGE_K:
            pc += 1 + (jt if acc >= k else jf)
        elif code == seccomp.BPF_JMP_JSET_K:
            pc += 1 + (jt if acc & k else jf)
        elif code == seccomp.BPF_RET_K:
            return k
        else:
            raise AssertionError(f"unknown opcode {code:#x} at {pc}")


@pytest.mark.parametrize("inet", [True, False])
def test_seccomp_program_is_whole_instructions_ending_in_a_return(inet: bool) -> None:
    program = seccomp_program(inet=inet)
    assert len(program) % 8 == 0
    insns = instructions(program)
    assert 0 < len(insns) <= 4096  # the kernel's BPF_MAXINSNS
    assert insns[-1][0] == seccomp.BPF_RET_K


@pytest.mark.parametrize("inet", [True, False])
def test_seccomp_program_jumps_land_inside_the_program(inet: bool) -> None:
    insns = instructions(seccomp_program(inet=inet))
    for pc, (code, jt, jf, _) in enumerate(insns):
        if code & 0x07 == 0x05:  # BPF_JMP
            assert pc + 1 + max(jt, jf) < len(insns), pc


def test_seccomp_program_checks_the_architecture_first() -> None:
    first = instructions(seccomp_program())[0]
    assert first[0] == seccomp.BPF_LD_W_ABS and first[3] == seccomp.OFFSET_ARCH


def test_seccomp_program_is_pure() -> None:
    assert seccomp_program() == seccomp_program()


def test_seccomp_kills_a_foreign_architecture() -> None:
    # A 32-bit syscall from a 64-bit process (int 0x80) would use other numbers.
    assert run_filter(0, I386) == KILL
    assert run_filter(26, I386) == KILL


@pytest.mark.parametrize("arch", [X86, ARM])
def test_seccomp_denies_every_listed_call_with_eperm(arch: int) -> None:
    for name, (x86_64, aarch64, _why) in seccomp.DENIED.items():
        nr = x86_64 if arch == X86 else aarch64
        if nr is not None:
            assert run_filter(nr, arch) == eperm(), name


@pytest.mark.parametrize(
    ("arch", "calls"),
    [
        (X86, {"read": 0, "write": 1, "openat": 257, "mmap": 9, "fork": 57, "execve": 59}),
        (ARM, {"read": 63, "write": 64, "openat": 56, "mmap": 222, "execve": 221}),
    ],
)
def test_seccomp_allows_ordinary_calls(arch: int, calls: dict[str, int]) -> None:
    for name, nr in calls.items():
        assert run_filter(nr, arch) == ALLOW, name


@pytest.mark.parametrize("arch", [X86, ARM])
def test_seccomp_allows_unix_and_loopback_inet_sockets_and_refuses_every_other_family(
    arch: int,
) -> None:
    nr = seccomp.SOCKET[0 if arch == X86 else 1]
    for family in (1, 2, 10):  # unix, inet, inet6 (the namespace's own loopback)
        assert run_filter(nr, arch, family, 1) == ALLOW, family
    for family in (17, 40, 38, 31, 0):  # packet, vsock, alg, bluetooth, unspec
        assert run_filter(nr, arch, family, 1) == eperm(errno.EAFNOSUPPORT), family
    # Netlink too, with the one errno that libzmq's interface lookup survives.
    assert run_filter(nr, arch, 16, 3, 0) == eperm(errno.EOPNOTSUPP)


@pytest.mark.parametrize("arch", [X86, ARM])
def test_seccomp_without_inet_allows_only_unix_sockets(arch: int) -> None:
    nr = seccomp.SOCKET[0 if arch == X86 else 1]
    assert run_filter(nr, arch, 1, 1, inet=False) == ALLOW  # AF_UNIX, SOCK_STREAM
    for family in (2, 10, 17, 40, 0):
        assert run_filter(nr, arch, family, 1, inet=False) == eperm(errno.EAFNOSUPPORT), family
    assert run_filter(nr, arch, 16, 3, inet=False) == eperm(errno.EOPNOTSUPP)
    # Only the low 32 bits are the int the kernel reads: high bits cannot smuggle AF_UNIX in.
    assert run_filter(nr, arch, (1 << 32) | 2, 1, inet=False) == eperm(errno.EAFNOSUPPORT)


def test_seccomp_inet_choice_changes_only_the_socket_families() -> None:
    for name, (x86_64, _, _) in seccomp.DENIED.items():
        assert x86_64 is not None
        assert run_filter(x86_64, X86, inet=False) == run_filter(x86_64, X86), name


@pytest.mark.parametrize("arch", [X86, ARM])
def test_seccomp_refuses_clone_into_new_namespaces_but_allows_threads_and_fork(arch: int) -> None:
    nr = seccomp.CLONE[0 if arch == X86 else 1]
    thread_flags = 0x3D0F00  # what glibc's pthread_create passes
    assert run_filter(nr, arch, thread_flags) == ALLOW
    assert run_filter(nr, arch, 17) == ALLOW  # fork(): SIGCHLD
    for flag in (
        0x00020000,
        0x02000000,
        0x04000000,
        0x08000000,
        0x10000000,
        0x20000000,
        0x40000000,
    ):
        assert run_filter(nr, arch, flag | 17) == eperm(), hex(flag)


@pytest.mark.parametrize("arch", [X86, ARM])
def test_seccomp_answers_clone3_with_enosys_so_libc_falls_back_to_clone(arch: int) -> None:
    assert run_filter(seccomp.CLONE3[0 if arch == X86 else 1], arch) == eperm(errno.ENOSYS)


@pytest.mark.parametrize("arch", [X86, ARM])
def test_seccomp_allows_only_the_linux_personality(arch: int) -> None:
    nr = seccomp.PERSONALITY[0 if arch == X86 else 1]
    assert run_filter(nr, arch, 0) == ALLOW
    assert run_filter(nr, arch, 0xFFFFFFFF) == ALLOW
    assert run_filter(nr, arch, 0x0040000) == eperm()  # ADDR_NO_RANDOMIZE
    assert run_filter(nr, arch, 0x0400000) == eperm()  # READ_IMPLIES_EXEC


def test_seccomp_refuses_x32_system_calls() -> None:
    assert run_filter(seccomp.X32_SYSCALL_BIT | 101, X86) == eperm(errno.ENOSYS)  # x32 ptrace
    assert run_filter(seccomp.X32_SYSCALL_BIT | 0, X86) == eperm(errno.ENOSYS)


# Linux 6.8's mount-table calls: Debian's libseccomp 2.5 does not know them (2.6 does, with the
# same numbers on both architectures, from the generic table).
NEWER_THAN_LIBSECCOMP_2_5 = frozenset({"statmount", "listmount"})


def test_seccomp_syscall_numbers_agree_with_libseccomp() -> None:
    name = ctypes.util.find_library("seccomp")
    if name is None:
        pytest.skip("libseccomp is not installed: nothing to cross-check the numbers against")
    resolve = ctypes.CDLL(name).seccomp_syscall_resolve_name_arch
    resolve.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    resolve.restype = ctypes.c_int
    table = {k: (v[0], v[1]) for k, v in seccomp.DENIED.items()}
    table |= {
        "socket": seccomp.SOCKET,
        "clone": seccomp.CLONE,
        "clone3": seccomp.CLONE3,
        "personality": seccomp.PERSONALITY,
    }
    for syscall, (x86, arm) in table.items():
        for arch, expected in ((X86, x86), (ARM, arm)):
            got = resolve(arch, syscall.encode())
            if got < 0 and syscall in NEWER_THAN_LIBSECCOMP_2_5:
                continue
            assert (got if got >= 0 else None) == expected, (syscall, hex(arch))
