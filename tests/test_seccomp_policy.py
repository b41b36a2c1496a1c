"""The worker's seccomp filter against its documented policy, for every x86_64 syscall number.

The filter libseccomp compiles is exported as BPF and run by a small interpreter
(tests/seccomp_bpf.py) for each number 0..1023 and for the argument patterns of the
conditional rules; a forked child with the real filter loaded cross-checks the interpreter
against the kernel on harmless calls.  Policy (docs/sandbox.md, "Seccomp policy"): the
allowlist is allowed, DENIED gets its errno, everything else ENOSYS, foreign ABIs are killed.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import re
from pathlib import Path

import pytest

from modelwarden.sandbox import seccomp
from tests.seccomp_bpf import AUDIT_ARCH_I386, X32_SYSCALL_BIT, export, run_in_filtered_child, verdict

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64's")

try:
    seccomp._lib()
    _LIB_OK, _LIB_WHY = True, ""
except seccomp.SeccompUnavailable as exc:
    _LIB_OK, _LIB_WHY = False, str(exc)
pytestmark = [pytestmark, pytest.mark.skipif(not _LIB_OK, reason=_LIB_WHY)]

ALLOW = seccomp.SCMP_ACT_ALLOW
KILL_PROCESS = seccomp.SCMP_ACT_KILL_PROCESS
ERRNO = seccomp.SCMP_ACT_ERRNO
ENOSYS = ERRNO(errno.ENOSYS)
EPERM = ERRNO(errno.EPERM)
MAX_NR = 1024  # the highest x86_64 syscall is ~470 today; the rest must be ENOSYS too

# Independent of seccomp.DENIED: what must never reach the kernel (issue #9 and the classic escapes).
MUST_BE_EPERM = """
modify_ldt memfd_create memfd_secret landlock_create_ruleset landlock_add_rule landlock_restrict_self
listmount statmount open_tree_attr open_tree move_mount fsopen fsmount fspick fsconfig mount_setattr mount
umount2 pivot_root chroot unshare setns ptrace process_vm_readv process_vm_writev pidfd_getfd kcmp execve
execveat bpf perf_event_open userfaultfd io_uring_setup io_uring_enter io_uring_register keyctl add_key
request_key init_module finit_module delete_module kexec_load kexec_file_load open_by_handle_at
name_to_handle_at reboot swapon swapoff iopl ioperm capset setuid setresuid setgroups lsm_set_self_attr
shmget personality
""".split()


def _name_table() -> dict[int, str]:
    lib = seccomp._lib()
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    libc = ctypes.CDLL(None)
    libc.free.argtypes = [ctypes.c_void_p]
    names = {nr: name for name, nr in seccomp.NEWER_X86_64.items()}
    for nr in range(MAX_NR):
        p = lib.seccomp_syscall_resolve_num_arch(0, nr)
        if p:
            names[nr] = ctypes.string_at(p).decode()
            libc.free(p)
    return names


NAMES = _name_table() if _LIB_OK else {}


@pytest.fixture(scope="module")
def prog():
    flt = seccomp.Filter().build()
    try:
        yield export(flt)
    finally:
        flt.close()


def expected(name: str | None) -> int | None:
    """The documented verdict for a syscall without conditions (None: conditional, checked below)."""
    if name in seccomp.CONDITIONAL:
        return None
    if name in seccomp.DENIED:
        return ERRNO(seccomp.DENIED[name])
    if name in seccomp.ALLOWLIST:
        return ALLOW
    return ENOSYS


def test_every_syscall_number_gets_the_documented_verdict(prog):
    assert len(NAMES) > 370 and NAMES[467] == "open_tree_attr"  # the table covers the kernel's syscalls
    wrong = {}
    for nr in range(MAX_NR):
        name = NAMES.get(nr)
        want = expected(name)
        if want is None:
            continue
        got = verdict(prog, nr, (1, 2, 3, 4, 5, 6))
        if got != want:
            wrong[f"{nr}:{name}"] = (hex(got), hex(want))
    assert not wrong


def test_unknown_numbers_fail_cleanly_never_kill(prog):
    for nr in range(MAX_NR):
        assert verdict(prog, nr) & 0xFFFF0000 not in (KILL_PROCESS, 0), nr  # KILL_PROCESS / KILL_THREAD
    for nr in (471, 500, 999, 1023, 0x3FFFFFFF):
        assert verdict(prog, nr) == ENOSYS


def test_the_gaps_of_issue_9_are_closed(prog):
    by_name = {v: k for k, v in NAMES.items()}
    for name in MUST_BE_EPERM:
        assert name in by_name, f"{name} unknown to the test's table"
        assert verdict(prog, by_name[name], (0, 0, 0)) == EPERM, name


def test_only_the_allowlist_is_allowed(prog):
    allowed = {NAMES.get(nr, str(nr)) for nr in range(MAX_NR) if verdict(prog, nr, (1,)) == ALLOW}
    # socket(AF_UNIX=1) and clone(flags=1) are allowed by their conditional rules, ioctl(1, 0) is not
    assert allowed == (set(seccomp.ALLOWLIST) - set(seccomp.DENIED) - set(seccomp.CONDITIONAL)) | {
        "socket", "socketpair", "clone"}
    assert len(allowed) < 200


def test_foreign_abis_are_killed(prog):
    assert verdict(prog, 1, arch=AUDIT_ARCH_I386) == KILL_PROCESS  # int 0x80 write
    assert verdict(prog, 11, arch=AUDIT_ARCH_I386) == KILL_PROCESS  # i386 execve
    for nr in (1, 59, 322, 512 + 8):  # x32: write, execve, execveat, x32-only rt_sigaction numbers
        assert verdict(prog, X32_SYSCALL_BIT | nr) in (KILL_PROCESS, ENOSYS), nr
        assert verdict(prog, X32_SYSCALL_BIT | nr) != ALLOW


AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK = 2, 10, 16, 17, 40


@pytest.mark.parametrize("name", ["socket", "socketpair"])
def test_sockets_only_af_unix(prog, name):
    nr = seccomp.syscall_number(name)
    assert verdict(prog, nr, (1, 1, 0)) == ALLOW
    for family in (AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK, 0, (1 << 32) | 1):
        assert verdict(prog, nr, (family, 1, 0)) == ERRNO(errno.EAFNOSUPPORT), family


def test_clone_without_new_namespaces(prog):
    nr = seccomp.syscall_number("clone")
    thread_flags = 0x3D0F00  # what glibc's pthread_create passes
    assert verdict(prog, nr, (thread_flags,)) == ALLOW
    assert verdict(prog, nr, (0x11,)) == ALLOW  # fork(): SIGCHLD
    for flag in seccomp.NEW_NAMESPACE_FLAGS:
        assert verdict(prog, nr, (flag | 0x11,)) == EPERM, hex(flag)


def test_ioctl_terminal_injection_denied(prog):
    nr = seccomp.syscall_number("ioctl")
    for cmd in (seccomp.TIOCSTI, seccomp.TIOCLINUX):
        assert verdict(prog, nr, (0, cmd, 0)) == EPERM
        assert verdict(prog, nr, (0, (0xFFFFFFFF << 32) | cmd, 0)) == EPERM  # the kernel ignores the upper half
    for cmd in seccomp.IOCTL_ALLOWED.values():
        assert verdict(prog, nr, (0, cmd, 0)) == ALLOW
    assert verdict(prog, nr, (0, 0x5422, 0)) == ENOSYS  # TIOCNOTTY: not in the list
    assert verdict(prog, nr, (0, 0x4B3A, 0)) == ENOSYS  # KDSETMODE


def test_the_interpreter_agrees_with_the_kernel():
    """Harmless calls in a forked child with the real filter: the kernel's errno is the interpreter's."""
    flt = seccomp.Filter().build()
    prog = export(flt)
    flt.close()
    import os

    r, w = os.pipe()
    nr = {n: seccomp.syscall_number(n) for n in ("getpid", "memfd_create", "modify_ldt", "listmount", "statmount",
                                                  "open_tree_attr", "unshare", "socket", "ioctl", "mseal",
                                                  "landlock_create_ruleset", "memfd_secret", "clone3")}
    calls = [
        (nr["getpid"], ()),
        (nr["memfd_create"], (0, 0)),  # NULL name: EFAULT if it ever got through
        (nr["modify_ldt"], (0, 0, 0)),  # read the LDT into NULL/0 bytes
        (nr["listmount"], (0, 0, 0, 0)),
        (nr["statmount"], (0, 0, 0, 0)),
        (nr["open_tree_attr"], (2**32 - 1, 0, 0, 0, 0)),
        (nr["unshare"], (0,)),  # no flags: a no-op if it got through
        (nr["socket"], (AF_INET, 1, 0)),
        (nr["ioctl"], (w, seccomp.TIOCSTI, 0)),  # on a pipe, never a terminal: ENOTTY if it got through
        (nr["ioctl"], (w, (0xFFFFFFFF << 32) | seccomp.TIOCSTI, 0)),
        (nr["ioctl"], (w, 0x5422, 0)),
        (nr["mseal"], (0, 0, 0)),
        (nr["landlock_create_ruleset"], (0, 0, 1)),  # version query
        (nr["memfd_secret"], (0,)),
        (nr["clone3"], (0, 0)),
        (1000, ()),
    ]
    results = run_in_filtered_child(lambda: seccomp.Filter().build(), calls)
    os.close(r)
    os.close(w)
    assert results[0][0] > 0  # getpid worked: the filter is not deny-all
    for (call_nr, args), (rc, err) in zip(calls[1:], results[1:]):
        v = verdict(prog, call_nr, args)
        assert v != ALLOW, call_nr
        assert (rc, err) == (-1, v & 0xFFFF), (call_nr, args, rc, err, hex(v))


def test_extending_the_allowlist():
    flt = seccomp.Filter(extra_allow=("mseal",)).build()
    prog = export(flt)
    flt.close()
    assert verdict(prog, seccomp.syscall_number("mseal")) == ALLOW
    assert seccomp.extra_allow_from_env({seccomp.ENV_ALLOW: "mseal, cachestat"}) == ("mseal", "cachestat")
    assert seccomp.extra_allow_from_env({}) == ()
    for bad in ("memfd_create", "execve", "ioctl", "x;rm", "ptrace,mseal"):
        with pytest.raises(ValueError):
            seccomp.extra_allow_from_env({seccomp.ENV_ALLOW: bad})


def test_denied_names_win_over_the_allowlist():
    flt = seccomp.Filter(extra_allow=("memfd_create",)).build()  # only reachable through the API
    prog = export(flt)
    flt.close()
    assert verdict(prog, seccomp.syscall_number("memfd_create")) == EPERM


def test_allowlist_names_are_real_syscalls():
    flt = seccomp.Filter().build()
    assert flt.summary is not None and flt.summary.unknown == ()
    flt.close()
    with pytest.raises(ValueError):
        seccomp.read_allowlist("read write\nnot-a-name")
    assert seccomp.read_allowlist("read # comment\n# x\nwrite read") == ("read", "write")


def test_docs_name_every_denied_syscall():
    text = (Path(__file__).resolve().parents[1] / "docs" / "sandbox.md").read_text()
    section = text[text.index("## Seccomp policy"):]
    section = section[: section.index("\n## ", 5)]
    documented = set(re.findall(r"[a-z_0-9]+", section))
    missing = [n for n in seccomp.DENIED if n not in documented]
    assert not missing


# -- inside a real worker -------------------------------------------------------------------------

PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))
    return [rc, ctypes.get_errno()]
result = {name: call(*spec) for name, spec in SPECS.items()}
with open('/tmp/probe', 'wb') as f:  # control: ordinary file work still runs
    result['tmp_write'] = f.write(b'x' * 4096)
"""


def test_the_worker_runs_under_the_allowlist():
    from modelwarden.sandbox.namespaces import probe_namespaces
    from tests.attacker import AttackerWorker

    ok, why = probe_namespaces()
    if not ok:
        pytest.skip(f"namespaces unavailable: {why}")
    nr = seccomp.syscall_number
    specs = {
        "getppid": (nr("getppid"),),  # control: allowed, answered by the kernel
        "ioctl_tcgets": (nr("ioctl"), 0, 0x5401, 0),  # control: reaches the kernel (/dev/null: ENOTTY)
        "ioctl_tiocsti": (nr("ioctl"), 0, seccomp.TIOCSTI, 0),
        "ioctl_tioclinux": (nr("ioctl"), 0, seccomp.TIOCLINUX, 0),
        "memfd_create": (nr("memfd_create"), 0, 0),
        "modify_ldt": (nr("modify_ldt"), 0, 0, 0),
        "listmount": (nr("listmount"), 0, 0, 0, 0),
        "open_tree_attr": (nr("open_tree_attr"), 2**32 - 1, 0, 0, 0, 0),
        "landlock": (nr("landlock_create_ruleset"), 0, 0, 1),
        "unassigned": (1000,),
    }
    with AttackerWorker() as w:
        got = w.run(f"SPECS = {specs!r}\n" + PROBE)
    assert got["getppid"][0] >= 0 and got["tmp_write"] == 4096
    assert got["ioctl_tcgets"] == [-1, errno.ENOTTY]
    for name in ("ioctl_tiocsti", "ioctl_tioclinux", "memfd_create", "modify_ldt", "listmount", "open_tree_attr",
                 "landlock"):
        assert got[name] == [-1, errno.EPERM], name
    assert got["unassigned"] == [-1, errno.ENOSYS]


def test_the_env_setting_reaches_the_worker(monkeypatch):
    import inspect

    from modelwarden.sandbox import nsinit
    from modelwarden.sandbox.namespaces import probe_namespaces
    from tests.attacker import AttackerWorker

    ok, why = probe_namespaces()
    if not ok:
        pytest.skip(f"namespaces unavailable: {why}")
    if "install(cfg" not in inspect.getsource(nsinit.harden_and_run):
        pytest.skip("nsinit.harden_and_run does not pass cfg['seccomp'] to seccomp.install() yet")
    probe = "SPECS = {'mseal': (%d, 0, 0, 0)}\n" % seccomp.syscall_number("mseal") + PROBE
    with AttackerWorker() as w:
        assert w.run(probe)["mseal"] == [-1, errno.ENOSYS]  # control: not in the allowlist
    monkeypatch.setenv(seccomp.ENV_ALLOW, "mseal")
    with AttackerWorker() as w:
        assert w.run(probe)["mseal"][1] != errno.ENOSYS  # reaches the kernel (mseal(0, 0, 0) = 0)
    monkeypatch.setenv(seccomp.ENV_ALLOW, "memfd_create")
    from modelwarden.errors import UsageError

    with pytest.raises(UsageError, match="cannot be allowed"):
        AttackerWorker().__enter__()
