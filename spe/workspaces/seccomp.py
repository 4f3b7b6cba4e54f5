"""The seccomp filter every workspace runs under: classic BPF bytes, built here without libseccomp.

A small deny-list on top of bubblewrap's namespaces: the system calls that attack the kernel or
other processes rather than compute. :func:`seccomp_program` is pure; bwrap loads it.
"""

from __future__ import annotations

import errno
import struct
import sys
from dataclasses import dataclass

# Written by hand rather than through libseccomp (Debian's python3-seccomp, or the ctypes
# binding pyseccomp, last released 2021): either would add a system library or an unmaintained
# package to the hub for ~250 instructions, while bytes built here are pure, so unit tests run
# them through a BPF interpreter on any machine (and check the numbers against libseccomp where
# it is installed).

# <linux/audit.h>: the arch word the kernel puts in seccomp_data. Any other arch (i386 or x32 on an
# x86_64 kernel, arm32 on arm64) is killed: its different syscall numbers would bypass this table.
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# <linux/seccomp.h>
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# <linux/filter.h>: the few classic BPF opcodes the program uses.
BPF_LD_W_ABS = 0x20  # A <- 32-bit word of seccomp_data at offset k
BPF_JMP_JEQ_K = 0x15  # pc += (A == k) ? jt : jf
BPF_JMP_JGE_K = 0x35  # unsigned A >= k
BPF_JMP_JSET_K = 0x45  # A & k != 0
BPF_RET_K = 0x06

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
OFFSET_NR = 0
OFFSET_ARCH = 4
# The low 32 bits of args[0]: every argument checked below is an int or flags that fit in 32 bits.
OFFSET_ARG0_LOW = 16 if sys.byteorder == "little" else 20

# Denied with EPERM, with the reason; numbers (x86_64, aarch64), None where the arch lacks it.
DENIED: dict[str, tuple[int | None, int | None, str]] = {
    "ptrace": (101, 117, "reading or steering another process"),
    "process_vm_readv": (310, 270, "reading another process's memory"),
    "process_vm_writev": (311, 271, "writing another process's memory"),
    "pidfd_getfd": (438, 438, "stealing another process's file descriptors"),
    "process_madvise": (440, 440, "acting on another process's memory"),
    "kcmp": (312, 272, "probing another process's kernel objects"),
    "kexec_load": (246, 104, "replacing the kernel"),
    "kexec_file_load": (320, 294, "replacing the kernel"),
    "init_module": (175, 105, "loading kernel code"),
    "finit_module": (313, 273, "loading kernel code"),
    "delete_module": (176, 106, "unloading kernel code"),
    "mount": (165, 40, "changing the file system view bwrap built"),
    "umount2": (166, 39, "uncovering what the sandbox's mounts hide"),
    "pivot_root": (155, 41, "changing the root bwrap built"),
    "chroot": (161, 51, "changing the root bwrap built"),
    "open_tree": (428, 428, "the new mount API"),
    "move_mount": (429, 429, "the new mount API"),
    "fsopen": (430, 430, "the new mount API"),
    "fsconfig": (431, 431, "the new mount API"),
    "fsmount": (432, 432, "the new mount API"),
    "fspick": (433, 433, "the new mount API"),
    "mount_setattr": (442, 442, "making a read-only mount writable"),
    "statmount": (457, 457, "reading the mount table (host paths of the mounts)"),
    "listmount": (458, 458, "reading the mount table (host paths of the mounts)"),
    "swapon": (167, 224, "host memory management"),
    "swapoff": (168, 225, "host memory management"),
    "reboot": (169, 142, "host power"),
    "acct": (163, 89, "host process accounting"),
    "syslog": (103, 116, "reading the host kernel log"),
    "quotactl": (179, 60, "host disk quotas"),
    "quotactl_fd": (443, 443, "host disk quotas"),
    "lookup_dcookie": (212, 18, "host profiling"),
    "bpf": (321, 280, "loading kernel programs: a frequent kernel exploit path"),
    "perf_event_open": (298, 241, "kernel profiling: side channels and a frequent exploit path"),
    "userfaultfd": (323, 282, "pausing the kernel mid-copy: the basis of many exploit races"),
    "keyctl": (250, 219, "the kernel keyring is not namespaced"),
    "add_key": (248, 217, "the kernel keyring is not namespaced"),
    "request_key": (249, 218, "the kernel keyring is not namespaced"),
    "unshare": (272, 97, "nested namespaces: a new user namespace regains capabilities"),
    "setns": (308, 268, "entering another namespace"),
    "open_by_handle_at": (304, 265, "opening host files by handle, around the mounts"),
    "name_to_handle_at": (303, 264, "the other half of open_by_handle_at"),
    "fanotify_init": (300, 262, "watching file access across mounts"),
    # io_uring performs operations (socket, openat, ...) without passing this filter.
    "io_uring_setup": (425, 425, "io_uring bypasses seccomp"),
    "io_uring_enter": (426, 426, "io_uring bypasses seccomp"),
    "io_uring_register": (427, 427, "io_uring bypasses seccomp"),
    "vhangup": (153, 58, "hanging up terminals"),
    "nfsservctl": (180, 42, "the kernel NFS server"),
    "iopl": (172, None, "raw I/O ports"),
    "ioperm": (173, None, "raw I/O ports"),
    "modify_ldt": (154, None, "rarely used, a known exploit path"),
    "uselib": (134, None, "obsolete"),
    "_sysctl": (156, None, "obsolete"),
    "ustat": (136, None, "obsolete"),
    "sysfs": (139, None, "obsolete"),
}

# Checked on their arguments: (x86_64, aarch64).
SOCKET = (41, 198)
CLONE = (56, 220)
CLONE3 = (435, 435)
PERSONALITY = (135, 92)

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
# clone() flags that create namespaces (CLONE_NEWNS ... CLONE_NEWNET).
CLONE_NEW_MASK = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
CLONE_NEW_MASK |= 0x20000000 | 0x40000000
# personality(): only Linux itself (0) and the query (0xffffffff); the rest turn off address
# space randomisation (ADDR_NO_RANDOMIZE) or make data executable (READ_IMPLIES_EXEC).
PERSONALITY_ALLOWED = (0x0, 0xFFFFFFFF)


def _errno(code: int) -> int:
    return SECCOMP_RET_ERRNO | code


@dataclass(frozen=True)
class _Insn:
    code: int
    k: int
    jt: int | str = 0  # an offset, or a label resolved by _assemble
    jf: int | str = 0


def _socket_check(arch: int, families: tuple[int, ...]) -> list[_Insn | str]:
    """socket(): a family in ``families`` is allowed, any other gets EAFNOSUPPORT."""
    allowed = f"{arch:x} socket allowed"
    out: list[_Insn | str] = [_Insn(BPF_LD_W_ABS, OFFSET_ARG0_LOW)]
    for family in families:
        out.append(_Insn(BPF_JMP_JEQ_K, family, allowed, 0))
    # Netlink is refused with EOPNOTSUPP: glibc's getifaddrs() opens a netlink socket, and
    # libzmq (ipykernel's transport) aborts the whole kernel when getifaddrs fails with any
    # errno but EOPNOTSUPP or EINVAL, which it takes as "no interface list" and carries on.
    out += [
        _Insn(BPF_JMP_JEQ_K, AF_NETLINK, 0, 1),
        _Insn(BPF_RET_K, _errno(errno.EOPNOTSUPP)),
    ]
    # Other families: EAFNOSUPPORT, not EPERM: it is what a kernel without the family says, so
    # libraries that probe for a family fall back quietly instead of failing.
    out += [_Insn(BPF_RET_K, _errno(errno.EAFNOSUPPORT)), allowed]
    out.append(_Insn(BPF_RET_K, SECCOMP_RET_ALLOW))
    return out


def _arch_block(arch: int, families: tuple[int, ...]) -> list[_Insn | str]:
    index = 0 if arch == AUDIT_ARCH_X86_64 else 1
    out: list[_Insn | str] = [_Insn(BPF_LD_W_ABS, OFFSET_NR)]
    if arch == AUDIT_ARCH_X86_64:
        # x32 ABI numbers (bit 30) reach the same kernel code under other numbers.
        out += [_Insn(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1), _Insn(BPF_RET_K, _errno(errno.ENOSYS))]
    for x86_64, aarch64, _why in DENIED.values():
        nr = x86_64 if index == 0 else aarch64
        if nr is not None:
            out += [_Insn(BPF_JMP_JEQ_K, nr, 0, 1), _Insn(BPF_RET_K, _errno(errno.EPERM))]
    # clone3 passes its flags in memory, which BPF cannot read: ENOSYS makes glibc fall back to
    # clone(), whose flags are checked below (the way container runtimes handle it).
    out += [_Insn(BPF_JMP_JEQ_K, CLONE3[index], 0, 1), _Insn(BPF_RET_K, _errno(errno.ENOSYS))]
    # Sockets of the listed families only (see seccomp_program); netlink, packet, vsock, alg,
    # bluetooth... are kernel attack surface that no analysis needs.
    check = _socket_check(arch, families)
    out += [_Insn(BPF_JMP_JEQ_K, SOCKET[index], 0, sum(isinstance(i, _Insn) for i in check))]
    out += check
    # clone() that creates namespaces, for the same reason as unshare (threads and fork pass).
    out += [
        _Insn(BPF_JMP_JEQ_K, CLONE[index], 0, 4),
        _Insn(BPF_LD_W_ABS, OFFSET_ARG0_LOW),
        _Insn(BPF_JMP_JSET_K, CLONE_NEW_MASK, 0, 1),
        _Insn(BPF_RET_K, _errno(errno.EPERM)),
        _Insn(BPF_RET_K, SECCOMP_RET_ALLOW),
    ]
    out += [
        _Insn(BPF_JMP_JEQ_K, PERSONALITY[index], 0, 5),
        _Insn(BPF_LD_W_ABS, OFFSET_ARG0_LOW),
        _Insn(BPF_JMP_JEQ_K, PERSONALITY_ALLOWED[0], 2, 0),
        _Insn(BPF_JMP_JEQ_K, PERSONALITY_ALLOWED[1], 1, 0),
        _Insn(BPF_RET_K, _errno(errno.EPERM)),
        _Insn(BPF_RET_K, SECCOMP_RET_ALLOW),
    ]
    out.append(_Insn(BPF_RET_K, SECCOMP_RET_ALLOW))
    return out


def _assemble(items: list[_Insn | str]) -> bytes:
    """Resolve label jumps (forward only, as BPF requires) and pack ``struct sock_filter``."""
    labels: dict[str, int] = {}
    insns: list[_Insn] = []
    for item in items:
        if isinstance(item, str):
            if item in labels:
                raise ValueError(f"BPF label {item!r} defined twice")
            labels[item] = len(insns)
        else:
            insns.append(item)
    out = bytearray()
    for pc, insn in enumerate(insns):
        jumps = []
        for target in (insn.jt, insn.jf):
            offset = labels[target] - pc - 1 if isinstance(target, str) else target
            if not 0 <= offset <= 255:
                raise ValueError(f"BPF jump of {offset} at {pc} does not fit")
            jumps.append(offset)
        # struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; } in the kernel's order.
        out += struct.pack("=HBBI", insn.code, jumps[0], jumps[1], insn.k)
    return bytes(out)


def seccomp_program(*, inet: bool = True) -> bytes:
    """The filter as ``struct sock_filter`` bytes, for ``bwrap --seccomp FD``.

    Sockets: AF_UNIX always (the notebook server's socket, the airlock). With ``inet`` also
    AF_INET and AF_INET6, which reach only the sandbox's own loopback (its network namespace
    has no other interface and no route): ipykernel binds its IOPub pipe and debugger on
    tcp://127.0.0.1 unconditionally, and libzmq aborts the kernel when that socket() fails.
    ``inet=False`` is for sandboxes that run no Jupyter kernel.
    """
    families = (AF_UNIX, AF_INET, AF_INET6) if inet else (AF_UNIX,)
    items: list[_Insn | str] = [
        _Insn(BPF_LD_W_ABS, OFFSET_ARCH),
        _Insn(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, "x86_64", 0),
        _Insn(BPF_JMP_JEQ_K, AUDIT_ARCH_AARCH64, "aarch64", 0),
        _Insn(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        "x86_64",
        *_arch_block(AUDIT_ARCH_X86_64, families),
        "aarch64",
        *_arch_block(AUDIT_ARCH_AARCH64, families),
    ]
    return _assemble(items)
