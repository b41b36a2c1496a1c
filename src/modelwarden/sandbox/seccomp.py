"""The worker's seccomp-bpf filter, built with libseccomp through ctypes.

Policy (docs/sandbox.md, "Seccomp policy", has the measurement behind it): an **allowlist**.

* allowed: the syscalls in ``seccomp_allow.txt`` (measured for TensorFlow import, load and
  predict, plus what the worker itself needs), extended per run by ``MODELWARDEN_SECCOMP_ALLOW``;
* conditional: ``socket``/``socketpair`` only for AF_UNIX (else EAFNOSUPPORT), ``clone``
  without ``CLONE_NEW*`` flags (else EPERM), ``ioctl`` only with the commands in
  :data:`IOCTL_ALLOWED` (``TIOCSTI``/``TIOCLINUX``: EPERM);
* :data:`DENIED`: EPERM (ENOSYS for ``clone3``), never allowed, whatever the allowlist says;
* everything else, including syscall numbers newer than this list: **ENOSYS**, so libraries
  treat them as "not implemented here" and fall back or fail cleanly (never a kill: a
  TensorFlow upgrade that needs a new syscall fails with an error naming it, not a crash).

Syscalls of other architectures (i386 via ``int 0x80``, x32) kill the process.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from modelwarden.sandbox.linux import (
    CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWTIME,
    CLONE_NEWUSER, CLONE_NEWUTS,
)

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_FLTATR_CTL_OPTIMIZE = 8  # 2: binary tree of syscall numbers (libseccomp >= 2.5)
SCMP_CMP_NE = 1
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
AF_UNIX = 1

ALLOW_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp_allow.txt")
ENV_ALLOW = "MODELWARDEN_SECCOMP_ALLOW"
DEFAULT_ERRNO = errno.ENOSYS


def SCMP_ACT_ERRNO(err: int) -> int:  # noqa: N802 - libseccomp's name
    return 0x00050000 | (err & 0xFFFF)


# syscall -> errno returned.  Grouped by why it is denied; none of these can be allowed.
DENIED: dict[str, int] = {}
for _group, _err in (
    # other processes: debugging, memory access, handle stealing
    (("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "pidfd_open",
      "pidfd_send_signal", "process_madvise", "process_mrelease", "migrate_pages", "move_pages",
      "get_robust_list"), errno.EPERM),
    # filesystem topology, namespaces, handle-based escapes
    (("mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree",
      "open_tree_attr", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "listmount", "statmount",
      "open_by_handle_at", "name_to_handle_at", "fanotify_init", "quotactl", "quotactl_fd"), errno.EPERM),
    # running other programs
    (("execve", "execveat", "uselib"), errno.EPERM),
    # memory the rlimits do not count (shmem is not address space): memfd, SysV shm
    (("memfd_create", "memfd_secret", "shmget", "shmat", "shmctl", "shmdt"), errno.EPERM),
    # kernel attack surface: modules, kexec, bpf, perf, keyrings, userfaultfd, io_uring, LDT,
    # landlock and LSM interfaces, personality, probes
    (("init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "bpf",
      "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup",
      "io_uring_enter", "io_uring_register", "lookup_dcookie", "personality", "modify_ldt",
      "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self", "lsm_get_self_attr",
      "lsm_set_self_attr", "lsm_list_modules", "uretprobe", "uprobe"), errno.EPERM),
    # host administration and credentials
    (("reboot", "swapon", "swapoff", "acct", "syslog", "settimeofday", "clock_settime", "clock_adjtime",
      "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm", "vhangup", "nfsservctl", "capset",
      "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
      "setgroups"), errno.EPERM),
    # clone3 cannot be filtered on its flags (they live in memory): ENOSYS makes glibc use clone()
    (("clone3",), errno.ENOSYS),
):
    for _name in _group:
        DENIED[_name] = _err

# x86_64 numbers of syscalls newer than some libseccomp releases (resolve by name fails there)
NEWER_X86_64: dict[str, int] = {
    "uretprobe": 335, "uprobe": 336, "statmount": 457, "listmount": 458, "lsm_get_self_attr": 459,
    "lsm_set_self_attr": 460, "lsm_list_modules": 461, "mseal": 462, "setxattrat": 463, "getxattrat": 464,
    "listxattrat": 465, "removexattrat": 466, "open_tree_attr": 467, "file_getattr": 468, "file_setattr": 469,
}

NEW_NAMESPACE_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
                       CLONE_NEWNET, CLONE_NEWTIME)
TIOCSTI = 0x5412  # pushes bytes into a terminal's input: typed into the operator's shell
TIOCLINUX = 0x541C  # console selection/paste
IOCTL_DENIED = (TIOCSTI, TIOCLINUX)
# ioctl commands Python and TensorFlow use (isatty, terminal size, non-blocking and close-on-exec flags)
IOCTL_ALLOWED = {"TCGETS": 0x5401, "TIOCGWINSZ": 0x5413, "FIONREAD": 0x541B, "FIONBIO": 0x5421,
                 "FIONCLEX": 0x5450, "FIOCLEX": 0x5451}
CONDITIONAL = ("socket", "socketpair", "clone", "ioctl")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class SeccompUnavailable(OSError):
    """libseccomp is missing or the kernel refused the filter."""


@dataclass(frozen=True)
class FilterSummary:
    allowed: tuple[str, ...]
    denied: tuple[str, ...]
    conditional: tuple[str, ...]
    unknown: tuple[str, ...]  # names this architecture/libseccomp does not know (skipped)


def read_allowlist(text: str | None = None) -> tuple[str, ...]:
    """The syscall names of ``seccomp_allow.txt`` (or ``text``): whitespace separated, ``#`` comments."""
    if text is None:
        with open(ALLOW_FILE, encoding="utf-8") as f:
            text = f.read()
    names: list[str] = []
    for line in text.splitlines():
        for word in line.split("#", 1)[0].split():
            if not _NAME.fullmatch(word):
                raise ValueError(f"seccomp allowlist: {word!r} is not a syscall name")
            if word not in names:
                names.append(word)
    return tuple(names)


# Read at import: the worker imports this module before pivot_root, when the file is still reachable.
try:
    ALLOWLIST: tuple[str, ...] | None = read_allowlist()
    _ALLOWLIST_ERROR = ""
except (OSError, ValueError) as _exc:
    ALLOWLIST, _ALLOWLIST_ERROR = None, f"cannot read {ALLOW_FILE}: {_exc}"


def extra_allow_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Names from ``MODELWARDEN_SECCOMP_ALLOW`` (comma or space separated); ValueError when invalid."""
    raw = (os.environ if environ is None else environ).get(ENV_ALLOW, "")
    names = tuple(n for n in re.split(r"[,\s]+", raw) if n)
    for n in names:
        if not _NAME.fullmatch(n):
            raise ValueError(f"{ENV_ALLOW}: {n[:40]!r} is not a syscall name")
        if n in DENIED or n in CONDITIONAL:
            raise ValueError(f"{ENV_ALLOW}: {n} is denied by the sandbox's policy and cannot be allowed")
    return names


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


def syscall_number(name: str, lib: ctypes.CDLL | None = None) -> int | None:
    """The native number of ``name`` (libseccomp's table, then NEWER_X86_64 on x86_64), or None."""
    nr = (lib or _lib()).seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:
        return nr
    if platform.machine() == "x86_64":
        return NEWER_X86_64.get(name)
    return None


class Filter:
    """The worker filter.  ``build()`` then ``load()`` (this thread and, with TSYNC, all threads)."""

    def __init__(self, extra_allow: Iterable[str] = (), default_action: int = SCMP_ACT_ERRNO(DEFAULT_ERRNO)) -> None:
        self._lib = _lib()
        self.extra_allow = tuple(extra_allow)
        self.default_action = default_action
        self._ctx = self._lib.seccomp_init(default_action)
        if not self._ctx:
            raise SeccompUnavailable("seccomp_init failed")
        self.summary: FilterSummary | None = None

    def _rule(self, action: int, nr: int, *cmps: _ArgCmp) -> None:
        if action == self.default_action:
            return  # libseccomp refuses rules that restate the default (EACCES)
        arr = (_ArgCmp * max(1, len(cmps)))(*cmps)
        rc = self._lib.seccomp_rule_add_array(self._ctx, action, nr, len(cmps), arr)
        if rc < 0:
            raise SeccompUnavailable(f"seccomp_rule_add({nr}) failed: {rc}")

    def build(self) -> "Filter":
        allowed: list[str] = []
        denied: list[str] = []
        unknown: list[str] = []
        if ALLOWLIST is None:
            raise SeccompUnavailable(_ALLOWLIST_ERROR)
        for name in dict.fromkeys(ALLOWLIST + self.extra_allow):
            if name in DENIED or name in CONDITIONAL:
                continue  # the policy wins over the list
            nr = syscall_number(name, self._lib)
            if nr is None:
                unknown.append(name)
                continue
            self._rule(SCMP_ACT_ALLOW, nr)
            allowed.append(name)
        for name, err in DENIED.items():
            nr = syscall_number(name, self._lib)
            if nr is None:
                unknown.append(name)
                continue
            self._rule(SCMP_ACT_ERRNO(err), nr)
            denied.append(name)
        self._conditional_rules()
        self._lib.seccomp_attr_set(self._ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)
        self._lib.seccomp_attr_set(self._ctx, SCMP_FLTATR_CTL_TSYNC, 1)
        self._lib.seccomp_attr_set(self._ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)  # older libseccomp: ignored
        self.summary = FilterSummary(tuple(allowed), tuple(denied), (
            "socket(AF_UNIX only)", "socketpair(AF_UNIX only)", "clone(no CLONE_NEW*)",
            "ioctl(" + ", ".join(IOCTL_ALLOWED) + "; TIOCSTI, TIOCLINUX: EPERM)"), tuple(unknown))
        return self

    def _conditional_rules(self) -> None:
        # sockets: only AF_UNIX (the channel is already open; nothing else is needed)
        for name in ("socket", "socketpair"):
            nr = syscall_number(name, self._lib)
            if nr is not None:
                self._rule(SCMP_ACT_ALLOW, nr, _ArgCmp(0, SCMP_CMP_EQ, AF_UNIX, 0))
                self._rule(SCMP_ACT_ERRNO(errno.EAFNOSUPPORT), nr, _ArgCmp(0, SCMP_CMP_NE, AF_UNIX, 0))
        # clone: threads and fork are fine, new namespaces are not
        nr = syscall_number("clone", self._lib)
        if nr is not None:
            all_new = 0
            for flag in NEW_NAMESPACE_FLAGS:
                all_new |= flag
                self._rule(SCMP_ACT_ERRNO(errno.EPERM), nr, _ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag))
            self._rule(SCMP_ACT_ALLOW, nr, _ArgCmp(0, SCMP_CMP_MASKED_EQ, all_new, 0))
        # ioctl: the command is an unsigned int; compare its low 32 bits only, as the kernel does
        nr = syscall_number("ioctl", self._lib)
        if nr is not None:
            for cmd in IOCTL_DENIED:
                self._rule(SCMP_ACT_ERRNO(errno.EPERM), nr, _ArgCmp(1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, cmd))
            for cmd in IOCTL_ALLOWED.values():
                self._rule(SCMP_ACT_ALLOW, nr, _ArgCmp(1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, cmd))

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


def install(options: Mapping | bool | None = None) -> FilterSummary:
    """Build and load the worker filter in the calling process (requires no_new_privs or CAP_SYS_ADMIN).

    ``options``: the launch config's ``seccomp`` entry; a mapping may carry ``allow`` (extra names).
    """
    extra = tuple(options.get("allow") or ()) if isinstance(options, Mapping) else ()
    f = Filter(extra).build()
    try:
        f.load()
        assert f.summary is not None
        return f.summary
    finally:
        f.close()
