"""Thin ctypes wrappers for the Linux calls Python 3.11 lacks (unshare, mount, pivot_root, capset...)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
NAMESPACE_FLAGS = {
    "user": CLONE_NEWUSER, "mount": CLONE_NEWNS, "pid": CLONE_NEWPID, "network": CLONE_NEWNET,
    "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS, "cgroup": CLONE_NEWCGROUP,
}

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT | _LOCKED, NO_SETUID_FIXUP | _LOCKED, KEEP_CAPS_LOCKED, NO_CAP_AMBIENT_RAISE | _LOCKED
SECUREBITS_LOCKDOWN = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


SYS_pivot_root = 155  # x86_64
SYS_capset = 126


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(SYS_pivot_root, _b(new_root), _b(put_old)), "pivot_root")


SYS_fsconfig = 431  # x86_64 (new mount API, Linux 5.2)
SYS_fspick = 433
FSPICK_CLOEXEC, FSPICK_EMPTY_PATH = 0x1, 0x8
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_RECONFIGURE = 0, 1, 7


def reconfigure_fs(dir_fd: int, options: dict[str, str | None]) -> None:
    """Change the filesystem whose root is ``dir_fd`` as a whole (superblock: e.g. a tmpfs's
    ``size``, ``nr_inodes``, ``ro``; None sets a flag), through ``fspick``/``fsconfig``: works
    when the mount is detached or in another mount namespace, which ``mount(MS_REMOUNT)`` refuses."""
    fs = _libc.syscall(SYS_fspick, dir_fd, b"", FSPICK_EMPTY_PATH | FSPICK_CLOEXEC)
    if fs < 0 and ctypes.get_errno() == errno.ENOSYS:
        raise OSError(errno.ENOSYS, "fspick: this kernel lacks the new mount API (Linux 5.2+ is needed to "
                                    "copy the model into the sandbox after the scan gate)")
    _check(fs, "fspick")
    try:
        for key, value in options.items():
            if value is None:
                _check(_libc.syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, key.encode(), None, 0), f"fsconfig {key}")
            else:
                _check(_libc.syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0),
                       f"fsconfig {key}={value}")
        _check(_libc.syscall(SYS_fsconfig, fs, FSCONFIG_CMD_RECONFIGURE, None, None, 0), "fsconfig reconfigure")
    finally:
        os.close(fs)


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    return _check(_libc.prctl(option, a2, a3, a4, a5), f"prctl({option})")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_all_capabilities() -> None:
    """Empty the bounding and ambient sets, lock securebits, then clear every capability set."""
    last = 40
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read().strip())
    except (OSError, ValueError):
        pass
    for cap in range(last + 1):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            pass  # cap unknown to this kernel
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise  # EINVAL: no ambient set at all (gVisor, Linux < 4.3), so nothing to clear
    try:
        prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKDOWN)
    except OSError:
        pass  # needs CAP_SETPCAP; the capset below still clears everything
    hdr = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(SYS_capset, ctypes.byref(hdr), ctypes.byref(data)), "capset")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_rlimit(which: int, value: int) -> None:
    """Set soft and hard limit (never raising above the current hard limit)."""
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def close_fds_except(keep: set[int]) -> None:
    """Close every inherited file descriptor but ``keep``."""
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 4096))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def status_fields(*names: str) -> dict[str, str]:
    """Fields of /proc/self/status (CapEff, NoNewPrivs, Seccomp, ...)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in names:
                    out[key] = value.strip()
    except OSError:
        pass
    return out


def assert_not_host_root() -> None:
    """Refuse to go on if any uid of our user namespace maps to host uid 0."""
    with open("/proc/self/uid_map") as f:
        for line in f:
            fields = line.split()
            if len(fields) == 3 and fields[1] == "0":
                raise PermissionError("the sandbox's user namespace maps host uid 0; refusing to run a worker as host root")


def blank_cmdline(title: bytes = b"modelwarden-worker") -> None:
    """Overwrite this process's argv and environ blocks (what /proc/PID/cmdline and environ show).

    The interpreter copied both at start-up; the original blocks are no longer read.
    """
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields after the command: state is index 0, arg_start..env_end are stat fields 48..51
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    for start, end in ((arg_start, arg_end), (env_start, env_end)):
        if 0 < start < end:
            ctypes.memset(start, 0, end - start)
    if arg_end - arg_start > len(title):
        ctypes.memmove(arg_start, title, len(title))
