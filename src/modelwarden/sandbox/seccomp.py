"""The worker's seccomp-bpf filter, built with libseccomp through ctypes.

Policy (docs/sandbox.md has the measurement behind it): default *allow*, and deny
with an errno every syscall below.  None of them appears in a trace of
TensorFlow importing, loading a SavedModel/Keras/TFLite model and running
inference (``strace -f -c``), so denying them costs nothing and removes the
kernel surface most sandbox escapes use.  Syscalls of other architectures
(i386 via int 0x80, x32) kill the process (libseccomp's bad-arch action).
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

from modelwarden.sandbox.linux import (
    CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWTIME,
    CLONE_NEWUSER, CLONE_NEWUTS,
)

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_CMP_NE = 1
SCMP_CMP_MASKED_EQ = 7
AF_UNIX = 1


def SCMP_ACT_ERRNO(err: int) -> int:  # noqa: N802 - libseccomp's name
    return 0x00050000 | (err & 0xFFFF)


# syscall -> errno returned.  Grouped by why it is denied.
DENIED: dict[str, int] = {}
for _group, _err in (
    # other processes: debugging, memory access, handle stealing
    (("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "pidfd_open",
      "process_madvise", "migrate_pages", "move_pages"), errno.EPERM),
    # filesystem topology and namespaces
    (("mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree", "fsopen",
      "fsconfig", "fsmount", "fspick", "mount_setattr", "open_by_handle_at", "name_to_handle_at",
      "fanotify_init", "quotactl", "quotactl_fd"), errno.EPERM),
    # running other programs
    (("execve", "execveat", "uselib"), errno.EPERM),
    # kernel attack surface: modules, kexec, bpf, perf, keyrings, userfaultfd, io_uring
    (("init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "bpf",
      "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup",
      "io_uring_enter", "io_uring_register", "lookup_dcookie", "personality"), errno.EPERM),
    # host administration
    (("reboot", "swapon", "swapoff", "acct", "syslog", "settimeofday", "clock_settime", "clock_adjtime",
      "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm", "vhangup", "nfsservctl"), errno.EPERM),
    # clone3 cannot be filtered on its flags (they live in memory): ENOSYS makes glibc use clone()
    (("clone3",), errno.ENOSYS),
):
    for _name in _group:
        DENIED[_name] = _err

NEW_NAMESPACE_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
                       CLONE_NEWNET, CLONE_NEWTIME)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class SeccompUnavailable(OSError):
    """libseccomp is missing or the kernel refused the filter."""


@dataclass(frozen=True)
class FilterSummary:
    denied: tuple[str, ...]
    conditional: tuple[str, ...]
    unknown: tuple[str, ...]  # names this architecture/libseccomp does not know


def _lib() -> ctypes.CDLL:
    name = "libseccomp.so.2"  # not find_library(): it runs ldconfig, which the sandbox cannot
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp not loadable ({name}): {exc}") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


class Filter:
    """The worker filter.  ``build()`` then ``load()`` (this thread and, with TSYNC, all threads)."""

    def __init__(self, default_action: int = SCMP_ACT_ALLOW) -> None:
        self._lib = _lib()
        self._ctx = self._lib.seccomp_init(default_action)
        if not self._ctx:
            raise SeccompUnavailable("seccomp_init failed")
        self.summary: FilterSummary | None = None

    def _nr(self, name: str) -> int | None:
        nr = self._lib.seccomp_syscall_resolve_name(name.encode())
        return None if nr < 0 else nr

    def _rule(self, action: int, nr: int, *cmps: _ArgCmp) -> None:
        arr = (_ArgCmp * max(1, len(cmps)))(*cmps)
        rc = self._lib.seccomp_rule_add_array(self._ctx, action, nr, len(cmps), arr)
        if rc < 0:
            raise SeccompUnavailable(f"seccomp_rule_add({nr}) failed: {rc}")

    def build(self) -> "Filter":
        denied: list[str] = []
        unknown: list[str] = []
        for name, err in DENIED.items():
            nr = self._nr(name)
            if nr is None:
                unknown.append(name)
                continue
            self._rule(SCMP_ACT_ERRNO(err), nr)
            denied.append(name)
        # sockets: only AF_UNIX (the channel is already open; nothing else is needed)
        for name in ("socket", "socketpair"):
            nr = self._nr(name)
            if nr is not None:
                self._rule(SCMP_ACT_ERRNO(errno.EAFNOSUPPORT), nr, _ArgCmp(0, SCMP_CMP_NE, AF_UNIX, 0))
        # clone: threads and fork are fine, new namespaces are not
        nr = self._nr("clone")
        if nr is not None:
            for flag in NEW_NAMESPACE_FLAGS:
                self._rule(SCMP_ACT_ERRNO(errno.EPERM), nr, _ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag))
        self._lib.seccomp_attr_set(self._ctx, SCMP_FLTATR_CTL_TSYNC, 1)
        self.summary = FilterSummary(tuple(denied), ("socket(family != AF_UNIX)", "socketpair(family != AF_UNIX)",
                                                     "clone(CLONE_NEW*)"), tuple(unknown))
        return self

    def load(self) -> None:
        rc = self._lib.seccomp_load(self._ctx)
        if rc < 0:
            raise SeccompUnavailable(f"seccomp_load failed: {rc}")

    def export_bpf(self, fd: int) -> None:
        rc = self._lib.seccomp_export_bpf(self._ctx, fd)
        if rc < 0:
            raise SeccompUnavailable(f"seccomp_export_bpf failed: {rc}")

    def close(self) -> None:
        if self._ctx:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None


def install() -> FilterSummary:
    """Build and load the worker filter in the calling process (requires no_new_privs or CAP_SYS_ADMIN)."""
    f = Filter().build()
    try:
        f.load()
        assert f.summary is not None
        return f.summary
    finally:
        f.close()
